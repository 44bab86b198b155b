"""Full fine-tuning of a text classifier, optionally with the embeddings and/or lower layers frozen.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_freeze.py      # full FT
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_freeze.py \
        --freeze_embeddings --freeze_layers 3          # embeddings + lower 3 layers frozen
    ... --freeze_layers -2                             # everything but the top 2 layers frozen

Frozen parameters never reach the optimizer and get no gradient buffers. With `--activation_checkpointing`
(transformers 5's name; `--gradient_checkpointing` is its deprecated alias) the run uses non-reentrant
checkpointing, so layers above frozen embeddings still get their gradients.
With nothing frozen the run is recorded as method "full"; the saved model is a normal safetensors folder.
"""

from hftune.config import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    FreezeArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
)
from hftune.errors import exit_on_user_error
from hftune.methods import apply_freeze
from hftune.tasks.classification import load_base_classifier, prepare_classifier_run, run_classification
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    **CLASSIFIER_DEFAULTS,
    # Every weight moves: a small learning rate with warm-up keeps the pretrained features intact
    "learning_rate": 8e-5,
    "weight_decay": 0.01,
    "output_dir": "outputs/sentiment_freeze",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, freeze_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, FreezeArguments, TrainingArguments), RECIPE_DEFAULTS, argv
    )
    frozen_anything = freeze_args.freeze_embeddings or freeze_args.freeze_layers != 0
    method = "freeze" if frozen_anything else "full"
    data, base_model = prepare_classifier_run(model_args, data_args, training_args, method=method)

    model, tokenizer = load_base_classifier(model_args, base_model, data)
    model = apply_freeze(model, freeze_args)

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
        method=method,
        decision=decision,
        base_model=base_model,
        extra_results={
            "freeze_embeddings": freeze_args.freeze_embeddings,
            "freeze_layers": freeze_args.freeze_layers,
        },
    )
    finish()


if __name__ == "__main__":
    main()
