"""Feature extraction: the pretrained body stays frozen; only a classifier on top of it is fitted.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sentiment_features.py
    ... --pooling cls --projection umap       # [CLS] pooling, UMAP plot of the training features
    ... --classifier head                     # train only the model's classification head with Trainer

`--classifier logreg` (default) runs the encoder once over the data and fits a scikit-learn logistic
regression on the pooled hidden states; the run folder keeps the fitted weights as safetensors
(`hftune.methods.features.load_feature_classifier(run_dir)` reloads them). `--classifier head` trains the
architecture's own head over the frozen body and saves a normal transformers folder. Both write
`feature_projection.png`, a 2-D map of the training features coloured by label.
"""

from hftune.config import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    FeatureArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
)
from hftune.errors import exit_on_user_error
from hftune.methods import apply_features
from hftune.tasks.classification import load_base_classifier, prepare_classifier_run, run_classification
from hftune.tasks.features import plot_projection_of_frozen_body, run_feature_extraction
from hftune.training.setup import prepare_training_args
from hftune.training.trainer import finish

RECIPE_DEFAULTS = {
    **CLASSIFIER_DEFAULTS,
    # --classifier head: only a small head learns on fixed features, so a high learning rate and more epochs
    "learning_rate": 5e-3,
    "num_train_epochs": 5,
    "output_dir": "outputs/sentiment_features",
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, feature_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, FeatureArguments, TrainingArguments), RECIPE_DEFAULTS, argv
    )
    artifact = "features" if feature_args.classifier == "logreg" else "full"
    data, base_model = prepare_classifier_run(
        model_args, data_args, training_args, method="features", artifact=artifact
    )

    if feature_args.classifier == "logreg":
        run_feature_extraction(
            data, training_args, model_args=model_args, data_args=data_args, feature_args=feature_args,
            base_model=base_model,
        )  # fmt: skip
        finish()
        return

    model, tokenizer = load_base_classifier(model_args, base_model, data)
    model = apply_features(model)
    training_args, decision = prepare_training_args(
        training_args, model_args, model, max_seq_length=data_args.max_seq_length
    )
    if training_args.process_index == 0:
        plot_projection_of_frozen_body(
            model, tokenizer, data, training_args.output_dir, feature_args=feature_args, data_args=data_args,
            seed=training_args.seed, batch_size=training_args.per_device_eval_batch_size,
        )  # fmt: skip
    run_classification(
        model,
        tokenizer,
        data,
        training_args,
        model_args=model_args,
        data_args=data_args,
        method="features",
        artifact="full",  # the head variant saves a whole transformers classifier
        decision=decision,
        base_model=base_model,
        extra_results={"classifier": "head", "pooling_for_projection": feature_args.pooling},
    )
    finish()


if __name__ == "__main__":
    main()
