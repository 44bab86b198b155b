"""Prompt tuning of a text classifier: learned embeddings (a soft prompt) are prepended to every input (peft's
PromptTuningConfig), the task head trains fully, the body stays frozen.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_prompt.py
    accelerate launch recipes/sentiment_prompt.py --model_name_or_path distilbert-base-uncased --num_virtual_tokens 30

Unlike prefix tuning it needs nothing of the model's forward, so it also runs on DistilBERT and ModernBERT.
The run folder holds a peft adapter (the prompt embeddings and the head); `AutoPeftModelForSequenceClassification`
loads it.
"""

from hftune.config import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
)
from hftune.errors import exit_on_user_error
from hftune.methods.prompt_learning import PromptLearningArguments, apply_prompt
from hftune.tasks.classification import load_base_classifier, prepare_classifier_run, run_classification
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    **CLASSIFIER_DEFAULTS,
    # Chosen on a subset of emotion (1,000 training messages, 1 epoch, 500 validation): validation accuracy
    # 0.278 at 1e-2, 0.380 at 3e-2, 0.364 at 1e-1. Prompt tuning is known to need more data (or a larger model).
    "learning_rate": 3e-2,
    "output_dir": "outputs/sentiment_prompt",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, prompt_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, PromptLearningArguments, TrainingArguments), RECIPE_DEFAULTS, argv
    )
    data, base_model = prepare_classifier_run(model_args, data_args, training_args, method="prompt")

    model, tokenizer = load_base_classifier(model_args, base_model, data)
    model = apply_prompt(model, prompt_args, max_seq_length=data_args.max_seq_length)

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
        method="prompt",
        decision=decision,
        base_model=base_model,
    )
    finish()


if __name__ == "__main__":
    main()
