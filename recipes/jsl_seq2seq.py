"""Train the Japanese -> JSL gloss seq2seq model from scratch, or continue training a saved one.

    python recipes/jsl_seq2seq.py                                   # shipped corpus, CPU/GPU/Mac picked automatically
    python recipes/jsl_seq2seq.py --model_size small                # presets: tiny (default), small, base
    python recipes/jsl_seq2seq.py --train_file my_pairs.csv --test_file my_test.csv --num_train_epochs 60
    python recipes/jsl_seq2seq.py --model_name_or_path outputs/jsl_seq2seq --train_file my_pairs.csv \
        --replay_ratio 0.5 --num_train_epochs 2 --learning_rate 1e-2 --parent_lr_ratio 0.03 \
        --output_dir outputs/jsl_mine   # continue with new words: new rows at 1e-2, the rest at 3e-4
    python recipes/jsl_seq2seq.py --export_attentions --export_weights encoder.embed_tokens.weight
    hftune translate --model outputs/jsl_seq2seq "ありがとう"

A new model's tokenizer is built from the training pairs; a continued model keeps its parent's, with the new
pairs' unknown characters and glosses appended (`--freeze_vocabulary` refuses them instead). On the shipped corpus
it trains on three builds of its generator (`--corpus_builds`). The model trains with Seq2SeqTrainer (teacher
forcing, label smoothing, length-grouped batches, fingerspelled names redrawn each epoch, a copy head that spells
by pointing at the input's kana); every epoch is scored
by generating glosses (gloss WER, BLEU, chrF, exact match), the best epoch by exact match is kept, and the test
split is scored last. The output folder loads anywhere with
`AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)`. `--config file.yaml` takes the same
keys as the flags; a killed run resumes from its last epoch when started again with the same command.
"""

from hftune.config import Seq2SeqTrainingArguments, check_output_folder, parse_recipe_args, set_seed
from hftune.errors import HftuneError, exit_on_user_error
from hftune.jsl.continuation import add_replay_pairs, load_parent, start_continuation
from hftune.jsl.train import (
    JslArguments,
    build_model,
    build_tokenizer,
    decide_device_and_precision,
    load_training_pairs,
    respells,
    run_jsl_training,
)
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    # Optimisation: a small Transformer from scratch takes a high learning rate with warmup and linear decay
    "learning_rate": 1e-3,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "linear",
    "weight_decay": 0.01,
    # 28 length-grouped epochs over the 13,529 pairs of --corpus_builds 3 (BENCHMARKS.md, section 9)
    "num_train_epochs": 28,
    "per_device_train_batch_size": 32,
    # Batches of similar lengths: a random batch of this corpus is over half padding; grouped, an epoch takes
    # about a quarter less time (BENCHMARKS.md, section 9)
    "train_sampling_strategy": "group_by_length",
    "per_device_eval_batch_size": 128,
    "seed": 42,
    # Evaluate by generation every epoch, keep the best checkpoint by exact match
    "output_dir": "outputs/jsl_seq2seq",
    "predict_with_generate": True,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "exact_match",
    "use_cache": True,  # Trainer copies this into config.use_cache: the per-epoch generation keeps its KV cache
    "logging_steps": 25,
    "report_to": "none",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    jsl_args, training_args = parse_recipe_args(
        (JslArguments, Seq2SeqTrainingArguments), RECIPE_DEFAULTS, argv
    )
    continuing = jsl_args.model_name_or_path is not None
    check_output_folder(
        training_args.output_dir,
        task="jsl-seq2seq",
        method="continued" if continuing else "scratch",
        artifact="remote-code",
    )
    set_seed(training_args.seed)  # before the model is built: new heads and LoRA weights draw from it
    splits, dataset_name, final_split = load_training_pairs(jsl_args, seed=training_args.seed)

    continuation = None
    if continuing:
        parent = load_parent(jsl_args, training_args.output_dir)
        splits = add_replay_pairs(splits, jsl_args, parent, seed=training_args.seed)
        continuation = start_continuation(parent, splits, jsl_args)
        model, tokenizer = parent.model, parent.tokenizer
    else:
        if jsl_args.freeze_vocabulary or jsl_args.replay_ratio or jsl_args.parent_lr_ratio != 1.0:
            raise HftuneError(
                "--freeze_vocabulary, --replay_ratio and --parent_lr_ratio apply to a continued model; pass "
                "--model_name_or_path with the saved model to continue"
            )
        tokenizer = build_tokenizer(
            splits["train"], jsl_args.max_source_length, spelling=respells(splits["train"], jsl_args)
        )
        model = build_model(tokenizer, jsl_args, seed=training_args.seed)

    training_args, decision = decide_device_and_precision(jsl_args, training_args, model)
    run_jsl_training(
        model,
        tokenizer,
        splits,
        training_args,
        jsl_args,
        decision=decision,
        dataset_name=dataset_name,
        final_split=final_split,
        continuation=continuation,
    )
    finish()


if __name__ == "__main__":
    main()
