"""Prefix tuning, prompt tuning, bottleneck adapters and the LoRA variants (DoRA, rsLoRA, PiSSA, OLoRA, LoRA+):
what each trains, a short real run of each recipe beating the majority class, its saved adapter reloaded by a fresh
process to exactly the recorded accuracy, and bad values refused before training in one line."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_leaderboard import run_recipe_in_process
from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

from hftune.config import LoraArguments
from hftune.memory import prepare_for_method
from hftune.methods import METHODS, head_parameter_names
from hftune.methods.adapters import NOT_MERGEABLE, AdapterArguments, apply_adapters
from hftune.methods.lora import apply_lora, loraplus_optimizer
from hftune.methods.prompt_learning import PromptLearningArguments, apply_prefix, apply_prompt
from hftune.models import count_parameters, load_classifier
from hftune.reporting.leaderboard import leaderboard_methods, method_command
from hftune.results import read_results

REPO = Path(__file__).resolve().parents[1]
LABELS = {0: "negative", 1: "positive"}
# One short run per method, shared by the tests below: the whole 480-message sample for 2 epochs.
RUN_FLAGS = [
    "--max_seq_length", "48", "--num_train_epochs", "2", "--precision", "fp32", "--save_strategy", "no",
    "--eval_strategy", "no", "--load_best_model_at_end", "false",
]  # fmt: skip
# Default suite: the two new families (about 40 s on 2 cores); the LoRA variants and prompt tuning are slow-marked.
TRAINED = {
    "default": {
        "prefix": ("sentiment_prefix.py", []),
        "adapters": ("sentiment_adapters.py", []),
    },
    "variants": {
        "prompt": ("sentiment_prompt.py", []),
        "dora": ("sentiment_lora.py", ["--use_dora"]),
        "rslora": ("sentiment_lora.py", ["--use_rslora"]),
        "pissa": ("sentiment_lora.py", ["--init_lora_weights", "pissa"]),
        "olora": ("sentiment_lora.py", ["--init_lora_weights", "olora"]),
        "loraplus": ("sentiment_lora.py", ["--loraplus_lr_ratio", "16"]),
    },
}
GROUPS = ["default", pytest.param("variants", marks=pytest.mark.slow)]


def body_and_head(model) -> tuple[set[str], set[str]]:
    """(the base model's own parameter names, the task head's), as peft names them inside its wrapper."""
    head = set(head_parameter_names(model))
    return {name for name, _ in model.named_parameters()} - head, head


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def head_copies(names: set[str]) -> set[str]:
    """The head's trained copies (peft's modules_to_save), named as in the unwrapped model."""
    return {
        name.replace("modules_to_save.default.", "")
        .removeprefix("base_model.model.")
        .removeprefix("base_model.")
        for name in names
        if ".modules_to_save." in name
    }


@pytest.fixture
def minilm(minilm_path):
    torch.manual_seed(0)
    return load_classifier(minilm_path, LABELS)[0]


# --- what each method trains --------------------------------------------------------------------------------


def test_prefix_trains_one_key_value_prefix_per_layer_and_the_head(minilm):
    _, head = body_and_head(minilm)
    model = apply_prefix(minilm, PromptLearningArguments(num_virtual_tokens=10))
    names = trainable(model)
    assert head_copies(names) == head
    prefix = names - {n for n in names if ".modules_to_save." in n}
    assert prefix == {"prompt_encoder.default.embedding.weight"}
    # 10 virtual tokens x 6 layers x (key, value) x hidden 384: nothing else of the body moves.
    assert model.prompt_encoder["default"].embedding.weight.shape == (10, 6 * 2 * 384)


def test_prefix_projection_trains_an_mlp_of_the_given_width(minilm):
    model = apply_prefix(minilm, PromptLearningArguments(num_virtual_tokens=10, prefix_projection=True,
                                                         encoder_hidden_size=64))  # fmt: skip
    transform = model.prompt_encoder["default"].transform
    assert [tuple(layer.weight.shape) for layer in transform if hasattr(layer, "weight")] == [
        (64, 384),
        (6 * 2 * 384, 64),
    ]


def test_prompt_trains_the_soft_prompt_and_the_head(minilm):
    _, head = body_and_head(minilm)
    model = apply_prompt(minilm, PromptLearningArguments(num_virtual_tokens=12))
    names = trainable(model)
    assert head_copies(names) == head
    assert names - {n for n in names if ".modules_to_save." in n} == {
        "prompt_encoder.default.embedding.weight"
    }
    assert model.prompt_encoder["default"].embedding.weight.shape == (12, 384)


@pytest.mark.parametrize(("adapter_config", "per_layer"), [("houlsby", 2), ("pfeiffer", 1)])
def test_adapters_train_their_bottlenecks_and_the_head_and_start_near_identity(
    minilm, adapter_config, per_layer
):
    _, head = body_and_head(minilm)
    inputs = torch.randint(1000, 5000, (3, 11))
    minilm.eval()
    with torch.no_grad():
        before = minilm(input_ids=inputs).logits
    model = apply_adapters(minilm, AdapterArguments(adapter_config=adapter_config, reduction_factor=16))
    names = trainable(model)
    assert head_copies(names) == head
    adapters = {n for n in names if ".bottleneck_" in n}
    assert names == adapters | {n for n in names if ".modules_to_save." in n}
    # down and up (weight and bias each) per adapter; houlsby: after attention and feed-forward, pfeiffer: after FFN
    assert len(adapters) == 6 * per_layer * 4
    if adapter_config == "pfeiffer":
        assert not any("attention" in n for n in adapters)
    assert (
        model.base_model.model.bert.encoder.layer[0].output.dense.bottleneck_down["default"].out_features
        == 24
    )
    model.eval()
    with torch.no_grad():
        after = model(input_ids=inputs).logits
    assert torch.allclose(before, after, atol=5e-3)  # near-identity start: the frozen model's output
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    assert "non-linearity" in NOT_MERGEABLE


def test_dora_trains_magnitudes_and_pissa_starts_at_the_base_output(minilm_path):
    torch.manual_seed(0)
    dora = apply_lora(load_classifier(minilm_path, LABELS)[0], LoraArguments(use_dora=True))
    magnitudes = {n for n in trainable(dora) if "lora_magnitude_vector" in n}
    assert len(magnitudes) == 6 * 2  # query and value of each layer
    base = load_classifier(minilm_path, LABELS)[0].eval()
    inputs = torch.randint(1000, 5000, (2, 9))
    with torch.no_grad():
        expected = base(input_ids=inputs).logits
        head = {
            k: v.clone() for k, v in base.state_dict().items() if k.startswith(("classifier", "bert.pooler"))
        }
        pissa = load_classifier(minilm_path, LABELS)[0]
        pissa.load_state_dict(head, strict=False)  # the same head, so only the body's start is compared
        pissa = apply_lora(pissa, LoraArguments(init_lora_weights="pissa")).eval()
        # PiSSA moves the top singular directions into A and B: W_res + B A still equals W.
        assert torch.allclose(pissa(input_ids=inputs).logits, expected, atol=1e-4)
    assert set(pissa.hftune_initial_lora) and all(".lora_" in n for n in pissa.hftune_initial_lora)


def test_loraplus_gives_the_b_matrices_the_ratio_times_the_learning_rate(minilm, tmp_path, capsys):
    from transformers import TrainingArguments

    model = apply_lora(minilm, LoraArguments(loraplus_lr_ratio=16))
    optimizer = loraplus_optimizer(model, TrainingArguments(str(tmp_path), learning_rate=1e-3), 16)
    assert "LoRA+" not in capsys.readouterr().err
    # The recipe's LoRA rate times 16 is the rate that collapsed on emotion: the user is told the one that worked.
    loraplus_optimizer(model, TrainingArguments(str(tmp_path), learning_rate=3e-3), 16)
    assert "consider --learning_rate 1e-3" in capsys.readouterr().err
    by_lr = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            by_lr[names[id(param)]] = group["lr"]
    assert {lr for n, lr in by_lr.items() if ".lora_B." in n} == {1e-3 * 16}
    assert {lr for n, lr in by_lr.items() if ".lora_A." in n} == {1e-3}
    assert set(by_lr) == trainable(model)  # every trained parameter is in exactly one group


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapters"])
def test_plan_counts_what_the_recipe_trains(minilm_path, method):
    planned = prepare_for_method(load_classifier(minilm_path, LABELS)[0], method)
    applied = METHODS[method].apply(load_classifier(minilm_path, LABELS)[0])
    assert count_parameters(planned) == count_parameters(applied)


def test_leaderboard_trains_every_new_method_with_its_recipe_and_flags():
    from argparse import Namespace

    args = Namespace(output_dir="runs", model_name_or_path=None, num_train_epochs=1.0, seed=42, train_file=None,
                     validation_file=None, dataset_name=None, per_device_train_batch_size=None,
                     max_train_samples=None, max_eval_samples=None, max_seq_length=None)  # fmt: skip
    expected = {"prefix": "sentiment_prefix.py", "prompt": "sentiment_prompt.py", "adapters": "sentiment_adapters.py",
                "dora": "sentiment_lora.py", "rslora": "sentiment_lora.py", "pissa": "sentiment_lora.py",
                "olora": "sentiment_lora.py", "loraplus": "sentiment_lora.py", "ia3": "sentiment_ia3.py"}  # fmt: skip
    assert set(expected) <= set(leaderboard_methods())
    for method, recipe in expected.items():
        command = method_command(method, args, [])
        assert Path(next(p for p in command if p.endswith(".py"))).name == recipe
        assert command[command.index("--output_dir") + 1] == str(Path("runs") / method)
    assert "--use_dora" in method_command("dora", args, [])
    assert METHODS["prefix"].quoted_share == "~0.1%" and METHODS["adapters"].quoted_share == "1-5%"


# --- short real runs, reloaded in a fresh process -----------------------------------------------------------


def majority_share(validation_file: Path) -> float:
    with validation_file.open(encoding="utf-8") as handle:
        labels = [row["label_name"] for row in csv.DictReader(handle, delimiter=";")]
    return Counter(labels).most_common(1)[0][1] / len(labels)


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory, emotion_dir) -> dict[str, Path]:
    """One short real run of each method of a group (`request.param`), with its recipe's default learning rate."""
    root = tmp_path_factory.mktemp(f"peft_family_{request.param}")
    data = [
        "--train_file",
        str(emotion_dir / "train.txt"),
        "--validation_file",
        str(emotion_dir / "validation.txt"),
    ]
    runs = {}
    for method, (recipe, flags) in TRAINED[request.param].items():
        runs[method] = root / method
        run_recipe_in_process(recipe, [*data, *RUN_FLAGS, *flags, "--output_dir", str(runs[method])])
    return runs


@pytest.mark.parametrize("trained", GROUPS, indirect=True)
def test_each_short_run_beats_the_majority_class(trained, emotion_dir):
    majority = majority_share(emotion_dir / "validation.txt")
    for method, folder in trained.items():
        record = read_results(folder)
        assert (record.method, record.artifact) == (method, "adapter")
        assert record.metrics["accuracy"] > majority + 0.03, (method, record.metrics["accuracy"], majority)
        assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()


@pytest.mark.parametrize("trained", GROUPS, indirect=True)
def test_a_fresh_process_reloads_each_adapter_to_the_recorded_accuracy(trained, emotion_dir):
    # One new interpreter for all of them: it registers the adapters' tuner with peft by importing hftune.
    script = (
        "import sys\nfrom hftune.evaluation import evaluate_command\n"
        "for folder in sys.argv[2:]:\n"
        "    assert evaluate_command([folder, '--validation_file', sys.argv[1]]) == 0\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(emotion_dir / "validation.txt"), *map(str, trained.values())],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for method, folder in trained.items():
        record = read_results(folder)
        assert record.evaluations[-1]["metrics"]["accuracy"] == record.metrics["accuracy"], method


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_are_saved_as_a_plain_lora_over_the_original_base(minilm_path, tmp_path, init):
    """The trained model runs on base weights PiSSA/OLoRA rewrote; the saved adapter must reproduce it on the
    untouched base model, head included."""
    import json

    from peft import PeftModel

    from hftune.methods.lora import save_lora

    torch.manual_seed(0)
    model = apply_lora(load_classifier(minilm_path, LABELS)[0], LoraArguments(init_lora_weights=init))
    with torch.no_grad():  # stand-in for training: move every trained tensor
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    inputs = torch.randint(1000, 5000, (2, 9))
    with torch.no_grad():
        expected = model.eval()(input_ids=inputs).logits
    save_lora(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (16, 32, True)
    torch.manual_seed(1)  # another head initialisation: only the saved one may count
    reloaded = PeftModel.from_pretrained(load_classifier(minilm_path, LABELS)[0], str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=inputs).logits, expected, atol=1e-5)


# --- bad values, refused before training ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory, minilm_path) -> Path:
    """A tiny random DistilBERT classifier with MiniLM's tokenizer: an architecture without past_key_values."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("distilbert")
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(folder)  # a body: each recipe adds its own head
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return folder


def test_prompt_and_adapters_run_on_distilbert(distilbert_dir):
    for apply in (apply_prompt, apply_adapters):
        model = apply(DistilBertForSequenceClassification.from_pretrained(distilbert_dir))
        inputs = torch.randint(1000, 5000, (2, 7))
        model(input_ids=inputs, labels=torch.tensor([0, 1])).loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("recipe", "flags", "message"),
    [
        ("sentiment_adapters.py", ["--reduction_factor", "0"],
         "error: --reduction_factor 0 must be at least 1; pass e.g. --reduction_factor 16"),
        ("sentiment_prefix.py", ["--num_virtual_tokens", "0"],
         "error: --num_virtual_tokens 0 must be at least 1; pass e.g. --num_virtual_tokens 20"),
        ("sentiment_prompt.py", ["--num_virtual_tokens", "-3"],
         "error: --num_virtual_tokens -3 must be at least 1; pass e.g. --num_virtual_tokens 20"),
        ("sentiment_prefix.py", ["--model_name_or_path", "{distilbert}"],
         "error: --method prefix needs a model whose forward takes past_key_values, and "
         "DistilBertForSequenceClassification (distilbert) does not under transformers 5; use prompt, lora, ia3, "
         "adapters or bitfit for it"),
        ("sentiment_prefix.py", ["--encoder_hidden_size", "64"],
         "error: --encoder_hidden_size 64 sizes the prefix MLP, which only --prefix_projection builds; add "
         "--prefix_projection or drop --encoder_hidden_size"),
        ("sentiment_prefix.py", ["--num_virtual_tokens", "500"],
         "error: --max_seq_length 128 plus --num_virtual_tokens 500 exceeds the 512 positions of bert; lower one "
         "of them"),
        ("sentiment_lora.py", ["--init_lora_weights", "pissa", "--load_in_4bit"],
         "error: --init_lora_weights pissa rewrites the base weights, which a 4/8-bit base cannot hold exactly; "
         "drop --load_in_4bit/--load_in_8bit or use --init_lora_weights default"),
        ("sentiment_lora.py", ["--init_lora_weights", "olora", "--use_dora"],
         "error: --init_lora_weights olora with --use_dora cannot be saved as an adapter of the original base "
         "model; choose one of them"),
        ("sentiment_lora.py", ["--loraplus_lr_ratio", "0"],
         "error: --loraplus_lr_ratio 0.0 must be greater than 0; pass e.g. --loraplus_lr_ratio 16"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line_before_training(
    recipe, flags, message, tmp_path, emotion_dir, distilbert_dir, capsys
):
    out = tmp_path / "run"
    flags = [f.replace("{distilbert}", str(distilbert_dir)) for f in flags]
    argv = ["--train_file", str(emotion_dir / "train.txt"), "--validation_file", str(emotion_dir / "validation.txt"),
            *flags, "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_recipe_in_process(recipe, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not out.exists()
