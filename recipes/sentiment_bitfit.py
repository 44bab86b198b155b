"""BitFit fine-tuning of a text classifier: every bias term and the task head train, all else stays frozen.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_bitfit.py

The run folder holds only the trained tensors (`bitfit_model.safetensors`, a few hundred KB) plus the
config and tokenizer; `hftune.methods.load_bitfit(run_dir)` puts them back on the base model and returns
a ready classifier. A model without bias terms (Llama-style) is refused with a clear error.
"""

from hftune.config import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
)
from hftune.errors import exit_on_user_error
from hftune.methods import apply_bitfit, save_bitfit
from hftune.tasks.classification import load_base_classifier, prepare_classifier_run, run_classification
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    **CLASSIFIER_DEFAULTS,
    # BitFit moves ~0.1% of the weights: it needs a learning rate far above full fine-tuning's
    "learning_rate": 3e-3,
    "output_dir": "outputs/sentiment_bitfit",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, TrainingArguments), RECIPE_DEFAULTS, argv
    )
    data, base_model = prepare_classifier_run(model_args, data_args, training_args, method="bitfit")

    model, tokenizer = load_base_classifier(model_args, base_model, data)
    model = apply_bitfit(model)

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
        method="bitfit",
        decision=decision,
        base_model=base_model,
        # Only the trained tensors: the base model comes back from its own folder or Hub id.
        save_artifact=lambda trained, out_dir: save_bitfit(trained, out_dir, base_model),
    )
    finish()


if __name__ == "__main__":
    main()
