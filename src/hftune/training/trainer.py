"""The Trainer every hftune recipe uses: checkpoints that appear whole or not at all, resumed runs that see the
same batches, and the process-group teardown at exit."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hftune.persistence import checkpoint_staging_dir, pause_before_commit, replace_directory


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N`: Trainer writes trainer_state.json last, so a folder without it
    (from a save that was not atomic) is skipped."""
    if not os.path.isdir(output_dir):
        return None
    complete = {
        int(match.group(1)): entry.path
        for entry in os.scandir(output_dir)
        if (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", entry.name))
        and os.path.isfile(os.path.join(entry.path, "trainer_state.json"))
    }
    return complete[max(complete)] if complete else None


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` whose order depends only on (seed, epoch), as accelerate's seedable sampler.

    The stock sampler draws from the global torch RNG when an epoch starts. A run resumed mid-epoch restores
    that RNG only after skipping the trained batches, so it replayed a different order than the run it
    continues: batches trained twice, others never, and metrics unequal to an uninterrupted run.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Trainer calls this before every epoch, resumed or not
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class AtomicCheckpointTrainer(Trainer):
    """A Trainer whose checkpoints appear whole or not at all, whose resumed runs see the same batches, and whose
    evaluation keeps the dataset's order.

    Each checkpoint is written by the stock `_save_checkpoint` under a hidden staging folder
    (`.checkpoint-N.partial/checkpoint-N`, the same path on every rank), then renamed into place; rotation
    and best-model tracking are then redone on the real folder, since the stock code ran them in staging.
    """

    _staging_root: str | None = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5.23 length-groups evaluation too under train_sampling_strategy="group_by_length": the
        # predictions then come back out of line with the dataset's rows (a JSL test_predictions.jsonl paired
        # each sentence with another one's glosses). Upstream's choice without grouping: sequential in one
        # process, None (accelerate shards the dataloader) in several.
        if eval_dataset is None or self.args.world_size > 1:
            return None
        return SequentialSampler(eval_dataset)

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = checkpoint_staging_dir(run_dir, name)
        self._staging_root = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staging_root, name, "trainer_state.json"))
            pause_before_commit(final)
            replace_directory(staging_root / name, final)
            staging_root.rmdir()
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


def finish() -> None:
    """Tear down the process group: without it 1 run in 5 aborted at exit with 2 gloo processes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
