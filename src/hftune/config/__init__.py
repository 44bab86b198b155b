"""Recipe arguments: the dataclasses (`arguments`) and their parsing from flags and YAML (`parsing`)."""

from hftune.config.arguments import (
    CLASSIFIER_DEFAULTS,
    DataArguments,
    FeatureArguments,
    FreezeArguments,
    LoraArguments,
    ModelArguments,
    TrainingArguments,
    check_attention_dropout,
)
from hftune.config.parsing import load_yaml_config, parse_recipe_args, strip_traceback_flag

__all__ = [
    "CLASSIFIER_DEFAULTS",
    "DataArguments",
    "FeatureArguments",
    "FreezeArguments",
    "LoraArguments",
    "ModelArguments",
    "TrainingArguments",
    "check_attention_dropout",
    "load_yaml_config",
    "parse_recipe_args",
    "strip_traceback_flag",
]
