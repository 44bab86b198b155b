"""Recipe arguments: the dataclasses (`arguments`) and their parsing from flags and YAML (`parsing`)."""

from hftune.config.arguments import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    FeatureArguments,
    FreezeArguments,
    LoraArguments,
    ModelArguments,
    Seq2SeqTrainingArguments,
    TrainingArguments,
    check_attention_dropout,
    set_seed,
)
from hftune.config.checks import check_output_folder
from hftune.config.parsing import load_yaml_config, parse_recipe_args, strip_traceback_flag

__all__ = [
    "CLASSIFIER_DEFAULTS",
    "DataArguments",
    "FeatureArguments",
    "FreezeArguments",
    "LoraArguments",
    "ModelArguments",
    "Seq2SeqTrainingArguments",
    "TrainingArguments",
    "check_attention_dropout",
    "check_output_folder",
    "load_yaml_config",
    "parse_recipe_args",
    "set_seed",
    "strip_traceback_flag",
]
