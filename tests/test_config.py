import pytest
import yaml

from hftune.config import (
    DataArguments,
    LoraArguments,
    ModelArguments,
    TrainingArguments,
    parse_recipe_args,
    strip_traceback_flag,
)
from hftune.errors import HftuneError

TYPES = (ModelArguments, DataArguments, LoraArguments, TrainingArguments)
DEFAULTS = {"output_dir": "outputs/x", "learning_rate": 5e-4, "lora_r": 8}


def write_yaml(tmp_path, values) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def test_recipe_defaults_then_yaml_then_cli(tmp_path):
    config = write_yaml(tmp_path, {"learning_rate": 0.002, "lora_r": 4, "max_train_samples": 100})
    model, data, lora, train = parse_recipe_args(TYPES, DEFAULTS, ["--config", config, "--lora_r", "16"])
    assert train.learning_rate == 0.002  # YAML beats the recipe default
    assert lora.lora_r == 16  # the flag beats YAML
    assert data.max_train_samples == 100
    assert train.output_dir == "outputs/x"  # recipe default survives
    assert model.model_name_or_path is None


def test_yaml_lists_and_bools(tmp_path):
    config = write_yaml(tmp_path, {"lora_target_modules": ["query", "value"], "load_in_4bit": True})
    _, _, lora, _ = parse_recipe_args(TYPES, DEFAULTS, ["--config", config])
    assert lora.lora_target_modules == ["query", "value"]
    assert lora.load_in_4bit is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rat": 0.1}, "unknown key `learning_rat`; did you mean `learning_rate`"),
        ({"learning_rate": "fast"}, "`learning_rate` has value 'fast'"),
        ({"lora_r": 2.5}, "`lora_r`"),
        ({"precision": "fp8"}, "`precision` is 'fp8'; choose one of auto, fp32, fp16, bf16"),
        ({"lora_target_modules": "query"}, "`lora_target_modules` must be a list"),
    ],
)
def test_bad_yaml_names_the_key(tmp_path, values, message):
    config = write_yaml(tmp_path, values)
    with pytest.raises(HftuneError, match="run.yaml") as err:
        parse_recipe_args(TYPES, DEFAULTS, ["--config", config])
    assert message in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("learning_rate: 0.1\nlora_r: [1, 2\n", encoding="utf-8")
    with pytest.raises(HftuneError, match=r"broken.yaml line \d+: not valid YAML"):
        parse_recipe_args(TYPES, DEFAULTS, ["--config", str(path)])


def test_missing_config_file(tmp_path):
    with pytest.raises(HftuneError, match="does not exist"):
        parse_recipe_args(TYPES, DEFAULTS, ["--config", str(tmp_path / "nope.yaml")])


def test_unknown_flag_is_an_error():
    with pytest.raises(HftuneError, match="unknown argument"):
        parse_recipe_args(TYPES, DEFAULTS, ["--lora_rank", "4"])


def test_wrong_flag_type_exits_with_the_flag_name(capsys):
    with pytest.raises(SystemExit):
        parse_recipe_args(TYPES, DEFAULTS, ["--learning_rate", "fast"])
    assert "--learning_rate" in capsys.readouterr().err


def test_bare_debug_is_ours_but_valued_debug_is_trainers():
    assert strip_traceback_flag(["--debug", "--lora_r", "4"]) == ["--lora_r", "4"]
    assert strip_traceback_flag(["--lora_r", "4", "--debug"]) == ["--lora_r", "4"]
    assert strip_traceback_flag(["--debug", "underflow_overflow"]) == ["--debug", "underflow_overflow"]


def test_every_field_has_help():
    import dataclasses

    from hftune.config import FeatureArguments, FreezeArguments

    for cls in (ModelArguments, DataArguments, LoraArguments, FreezeArguments, FeatureArguments):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
