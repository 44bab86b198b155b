"""Prefix tuning of a text classifier: learned key/value vectors sit before the real tokens in every attention
layer (peft's PrefixTuningConfig), the task head trains fully, the body stays frozen.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_prefix.py
    accelerate launch recipes/sentiment_prefix.py --num_virtual_tokens 30 --prefix_projection

The model's forward must take `past_key_values`: BERT-family models (the embedded MiniLM) do; DistilBERT and
ModernBERT do not under transformers 5 and are refused before training (use recipes/sentiment_prompt.py there).
The run folder holds a peft adapter (the prefix and the head); `AutoPeftModelForSequenceClassification` loads it.
"""

from hftune.config import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
)
from hftune.errors import exit_on_user_error
from hftune.methods.prompt_learning import PromptLearningArguments, apply_prefix
from hftune.tasks.classification import load_base_classifier, prepare_classifier_run, run_classification
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    **CLASSIFIER_DEFAULTS,
    # Chosen on a subset of emotion (1,000 training messages, 1 epoch, 500 validation: BENCHMARKS.md section 7):
    # validation accuracy 0.462 at 3e-3, 0.490 at 1e-2, 0.562 at 3e-2, 0.322 at 1e-1.
    "learning_rate": 3e-2,
    "output_dir": "outputs/sentiment_prefix",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, prefix_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, PromptLearningArguments, TrainingArguments), RECIPE_DEFAULTS, argv
    )
    data, base_model = prepare_classifier_run(model_args, data_args, training_args, method="prefix")

    model, tokenizer = load_base_classifier(model_args, base_model, data)
    model = apply_prefix(model, prefix_args, max_seq_length=data_args.max_seq_length)

    training_args, decision = prepare_training_args(
        training_args, model_args, model, max_seq_length=data_args.max_seq_length
    )
    run_classification(
        model,
        tokenizer,
        data,
        training_args,
        model_args=model_args,
        data_args=data_args,
        method="prefix",
        decision=decision,
        base_model=base_model,
    )
    finish()


if __name__ == "__main__":
    main()
