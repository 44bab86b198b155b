"""Which parameters each fine-tuning method trains, and that frozen ones really stay out of training."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DataCollatorWithPadding,
    DistilBertConfig,
    LlamaConfig,
    RobertaConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hftune.config import FreezeArguments, LoraArguments, ModelArguments
from hftune.errors import HftuneError
from hftune.methods import (
    apply_bitfit,
    apply_features,
    apply_freeze,
    apply_lora,
    encoder_layers,
    head_parameter_names,
    lora_target_modules,
)
from hftune.models import count_parameters, load_classifier
from hftune.training.setup import prepare_training_args

LABELS = {0: "negative", 1: "positive"}
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish.",
    "an utterly charming and hilarious film that reminded me why i love the movies.",
    "it's a bad sign when you're rooting for the villain to win just to end the story.",
    "one of the most beautifully shot films of the year.",
    "dull, lifeless and far too long.",
    "a triumph of style and substance.",
    "i kept checking my watch.",
]


def minilm_classifier(path: str):
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    return model, AutoTokenizer.from_pretrained(path)


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def tiny_model(kind: str):
    common = {"vocab_size": 100, "max_position_embeddings": 64, "num_labels": 3}
    if kind == "distilbert":
        config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, **common)
    elif kind == "roberta":
        config = RobertaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            pad_token_id=1,
            **common,
        )
    else:
        config = BertConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **common
        )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


# --- exact parameter counts on the real MiniLM ---------------------------------------------------


def test_bitfit_trains_exactly_every_bias_and_the_head(minilm_path):
    model, _ = minilm_classifier(minilm_path)
    cfg = model.config
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    # Per layer: q, k, v, attention output, attention LayerNorm, output dense, output LayerNorm (h each) + intermediate.
    per_layer_biases = 7 * h + inter
    # The head: BERT's pooler (dense h x h + bias; it only serves classification) and the classifier.
    embeddings_ln_bias, head = h, (h * h + h) + (h * 2 + 2)
    expected = layers * per_layer_biases + embeddings_ln_bias + head

    apply_bitfit(model)
    trainable, total = count_parameters(model)
    assert trainable == expected == 174_338
    assert total == sum(p.numel() for p in model.parameters())
    names = trainable_names(model)
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= names
    assert all(n.endswith(".bias") or n.startswith(("classifier.", "bert.pooler.")) for n in names)


@pytest.mark.parametrize(
    ("freeze_embeddings", "freeze_layers", "frozen_layers"),
    [(True, 2, [0, 1]), (False, -2, [0, 1, 2, 3]), (True, 0, []), (False, 6, [0, 1, 2, 3, 4, 5])],
)
def test_freeze_trains_exactly_what_is_not_frozen(
    minilm_path, freeze_embeddings, freeze_layers, frozen_layers
):
    model, _ = minilm_classifier(minilm_path)
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    per_layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())

    apply_freeze(model, FreezeArguments(freeze_embeddings=freeze_embeddings, freeze_layers=freeze_layers))
    trainable, _ = count_parameters(model)
    assert trainable == total - embeddings * freeze_embeddings - per_layer * len(frozen_layers)
    for i, layer in enumerate(model.bert.encoder.layer):
        assert all(p.requires_grad == (i not in frozen_layers) for p in layer.parameters()), f"layer {i}"
    assert all(p.requires_grad != freeze_embeddings for p in model.bert.embeddings.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_freeze_rejects_more_layers_than_the_model_has(minilm_path):
    model, _ = minilm_classifier(minilm_path)
    with pytest.raises(HftuneError, match="--freeze_layers -7: the model has only 6 layers"):
        apply_freeze(model, FreezeArguments(freeze_layers=-7))


def tiny_llama_classifier():
    """A decoder-only classifier without bias terms, of a type no recipe was written for."""
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    return AutoModelForSequenceClassification.from_config(config)


def test_bitfit_refuses_a_model_without_biases():
    model = tiny_llama_classifier()
    with pytest.raises(HftuneError, match="LlamaForSequenceClassification has no bias terms"):
        apply_bitfit(model)


# --- any encoder architecture ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_methods_select_parameters_generically(kind):
    model = tiny_model(kind)
    layers = encoder_layers(model)
    assert len(layers) == 2
    head = set(head_parameter_names(model))
    # Outside the body, except BERT's pooler, which only serves classification.
    body = model.base_model_prefix + "."
    assert head and all(not n.startswith(body) or n.startswith(body + "pooler.") for n in head)
    assert any(n.startswith(body + "pooler.") for n in head) == (kind == "bert")

    apply_freeze(model, FreezeArguments(freeze_embeddings=True, freeze_layers=1))
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not any(p.requires_grad for p in model.get_input_embeddings().parameters())
    assert head <= trainable_names(model)

    apply_bitfit(model)
    names = trainable_names(model)
    assert head <= names
    assert all(n.endswith(".bias") for n in names - head)
    assert any(n.startswith(model.base_model_prefix + ".") for n in names)

    apply_features(model)
    assert trainable_names(model) == head

    lora = apply_lora(model, LoraArguments(lora_r=4))
    names = trainable_names(lora)
    body_lora = [n for n in names if "lora_" in n]
    assert body_lora, "LoRA found no target modules"
    # Everything else trainable is the (saved) copy of the head.
    assert all("modules_to_save" in n for n in names - set(body_lora))
    assert len(names - set(body_lora)) == len(head)
    # Default targets: the attention query and value projections (peft's choice, the LoRA paper's).
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in body_lora}
    assert adapted == ({"q_lin", "v_lin"} if kind == "distilbert" else {"query", "value"})


def test_lora_targets_fall_back_to_every_linear_layer_and_obey_the_flag():
    llama = tiny_llama_classifier()
    assert lora_target_modules(llama, LoraArguments()) == ["q_proj", "v_proj"]  # peft's default for llama
    llama.config.model_type = "unheard-of"
    assert lora_target_modules(llama, LoraArguments()) == "all-linear"
    assert lora_target_modules(llama, LoraArguments(lora_target_modules=["k_proj"])) == ["k_proj"]
    assert lora_target_modules(llama, LoraArguments(lora_target_modules=["all-linear"])) == "all-linear"


# --- frozen parameters stay out of training --------------------------------------------------------


class GradientRecorder(TrainerCallback):
    """Norm of every parameter's gradient just before the optimizer step (None: no gradient buffer)."""

    def __init__(self) -> None:
        self.norms: list[dict[str, float | None]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append(
            {n: None if p.grad is None else float(p.grad.norm()) for n, p in model.named_parameters()}
        )


def tiny_trainer(model, tokenizer, tmp_path, **overrides) -> tuple[Trainer, GradientRecorder]:
    dataset = Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0, 1, 0, 1, 0]})
    dataset = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, seed=0, **overrides,
    )  # fmt: skip
    args, _ = prepare_training_args(args, ModelArguments(precision="fp32"), model)
    recorder = GradientRecorder()
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset.remove_columns(["text"]),
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[recorder],
    )  # fmt: skip
    return trainer, recorder


def test_frozen_parameters_get_no_gradient_and_stay_out_of_the_optimizer(minilm_path, tmp_path):
    model, tokenizer = minilm_classifier(minilm_path)
    apply_freeze(model, FreezeArguments(freeze_embeddings=True, freeze_layers=3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    trainer, recorder = tiny_trainer(model, tokenizer, tmp_path, gradient_accumulation_steps=2)
    trainer.train()

    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    assert {n for n in params if id(params[n]) in in_optimizer} == set(params) - frozen
    (norms,) = recorder.norms  # two micro-batches accumulated into one optimizer step
    assert all(norms[n] is None for n in frozen)
    assert norms["bert.encoder.layer.3.attention.self.query.weight"] > 0
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name in frozen), name


def test_checkpointing_with_frozen_embeddings_still_reaches_the_lowest_trainable_layer(minilm_path, tmp_path):
    model, tokenizer = minilm_classifier(minilm_path)
    apply_freeze(model, FreezeArguments(freeze_embeddings=True, freeze_layers=1))
    trainer, recorder = tiny_trainer(model, tokenizer, tmp_path, gradient_checkpointing=True)
    assert trainer.args.activation_checkpointing_kwargs == {"use_reentrant": False}
    trainer.train()
    assert model.bert.encoder.layer[1].gradient_checkpointing  # checkpointing really ran
    (norms,) = recorder.norms
    lowest = [n for n in norms if n.startswith("bert.encoder.layer.1.")]
    assert lowest and all(norms[n] is not None and norms[n] > 0 for n in lowest)


def test_reentrant_checkpointing_without_input_grads_would_zero_the_gradients(minilm_path):
    """The pitfall the recipes avoid, reproduced: proves the test above can fail."""
    model, tokenizer = minilm_classifier(minilm_path)
    apply_freeze(model, FreezeArguments(freeze_embeddings=True))
    model.gradient_checkpointing_enable({"use_reentrant": True})
    model.disable_input_require_grads()
    model.train()
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with pytest.warns(UserWarning, match="requires_grad"):
        model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is None
    assert model.classifier.weight.grad is not None


def test_loading_a_classifier_reports_its_new_head_in_one_line(minilm_path, capfd):
    """transformers' LOAD REPORT table (the head is missing from the checkpoint, as fine-tuning expects) is
    replaced by one hftune line naming the new head; nothing else about the load is printed."""
    load_classifier(minilm_path, {0: "negative", 1: "positive"})
    out, err = capfd.readouterr()
    assert "hftune: new classification head initialised: classifier.bias, classifier.weight" in out
    assert "LOAD REPORT" not in out + err and "MISSING" not in out + err and "not sharded" not in out + err
