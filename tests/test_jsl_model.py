"""The JSL seq2seq model: forward/loss, KV-cached generation, attentions, dtypes, save/load and remote code."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from hftune.errors import HftuneError
from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer
from hftune.jsl.artifacts import load_jsl_model, save_jsl_model
from hftune.jsl.modeling_jsl import CACHE_FIELD, shift_tokens_right
from hftune.persistence import MANIFEST_NAME

PAIRS = [
    ("ありがとう", "<ありがとう>"),
    ("わたしはたべます", "<私> <食べる>"),
    ("きのう図書館に行きました", "<昨日> <図書館> <行く> <終わる>"),
    ("あした学校に行きません", "<明日> <学校> <行く> <ない>"),
    ("佐藤さんはいつ図書館で雑誌を読みますか", "<佐藤> <図書館> <雑誌> <読む> <いつ>"),
    ("おはようございます", "<おはよう>"),
]
SOURCES = [ja for ja, _ in PAIRS]
TARGETS = [gloss for _, gloss in PAIRS]


def tiny_config(tokenizer: JslTokenizer, **overrides) -> JslSeq2SeqConfig:
    settings = dict(
        vocab_size=len(tokenizer),
        d_model=64,
        num_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        d_ff=128,
        dropout=0.0,
    )
    settings.update(overrides)
    return JslSeq2SeqConfig(**settings)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: a second thread only adds contention on the shared 2-core machine (10x slower here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer() -> JslTokenizer:
    return JslTokenizer.build_from_pairs(PAIRS)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(SOURCES, text_target=TARGETS, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def trained(tokenizer, batch) -> JslSeq2SeqForConditionalGeneration:
    """A tiny model overfitted on PAIRS, so its greedy outputs are confident rather than near-ties."""
    torch.manual_seed(0)
    model = JslSeq2SeqForConditionalGeneration(tiny_config(tokenizer))
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(120):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.training_losses = losses
    return model


def encoder_inputs(batch) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_config_docstring_documents_every_hyper_parameter():
    params = [
        name
        for name in inspect.signature(JslSeq2SeqConfig.__init__).parameters
        if name not in ("self", "kwargs")
    ]
    undocumented = [name for name in params if f"{name} (" not in JslSeq2SeqConfig.__doc__]
    assert not undocumented
    config = JslSeq2SeqConfig(decoder_layers=5, encoder_layers=2)
    # The v5 cache sizes itself from the decoder through num_hidden_layers.
    assert config.num_hidden_layers == 5
    assert config.get_text_config(decoder=True).num_hidden_layers == 5
    with pytest.raises(ValueError, match="num_heads=3"):
        JslSeq2SeqConfig(d_model=64, num_heads=3)


def test_loss_uses_shifted_labels_ignore_index_and_label_smoothing(tokenizer, batch):
    torch.manual_seed(0)
    model = JslSeq2SeqForConditionalGeneration(tiny_config(tokenizer, label_smoothing=0.1)).eval()
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    out = model(**encoder_inputs(batch), labels=labels)
    decoder_input_ids = shift_tokens_right(
        labels, tokenizer.pad_token_id, model.config.decoder_start_token_id
    )
    assert decoder_input_ids[0, 0] == tokenizer.bos_token_id
    assert torch.equal(
        decoder_input_ids[:, 1:][labels[:, :-1] != -100], labels[:, :-1][labels[:, :-1] != -100]
    )
    explicit = model(**encoder_inputs(batch), decoder_input_ids=decoder_input_ids)
    assert torch.equal(out.logits, explicit.logits)
    flat_logits, flat_labels = out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1)
    expected = torch.nn.functional.cross_entropy(
        flat_logits, flat_labels, ignore_index=-100, label_smoothing=0.1
    )
    unsmoothed = torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert not torch.isclose(out.loss, unsmoothed)
    # Trainer passes the token count: the loss becomes sum / count.
    count = int((labels != -100).sum())
    summed = model(**encoder_inputs(batch), labels=labels, num_items_in_batch=torch.tensor(count * 2)).loss
    torch.testing.assert_close(summed * 2, expected)
    assert out.logits.dtype == torch.float32


def test_training_lowers_loss_and_reproduces_training_pairs(trained, tokenizer, batch):
    losses = trained.training_losses
    assert losses[-1] < 0.2 * losses[0]
    generated = trained.generate(**encoder_inputs(batch), num_beams=1, do_sample=False)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == TARGETS


def test_padding_does_not_change_a_sentence_outputs(trained, tokenizer, batch):
    alone = tokenizer([SOURCES[0]], text_target=[TARGETS[0]], return_tensors="pt")
    single = trained(**encoder_inputs(alone), labels=alone["labels"]).logits[0]
    target_len = alone["labels"].shape[1]
    padded_labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    in_batch = trained(**encoder_inputs(batch), labels=padded_labels).logits[0, :target_len]
    torch.testing.assert_close(in_batch, single, rtol=1e-4, atol=1e-5)


def greedy_without_cache(model, batch, steps: int) -> torch.Tensor:
    """Reference greedy decoder: re-runs the full decoder on the whole prefix at every step, with eos
    masked exactly as `generate(min_new_tokens=steps)` does."""
    start = torch.full((batch["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
    tokens = start
    with torch.no_grad():
        for _ in range(steps):
            logits = model(**encoder_inputs(batch), decoder_input_ids=tokens, use_cache=False).logits[:, -1]
            logits[:, model.config.eos_token_id] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


def test_cached_greedy_matches_uncached_and_a_hand_written_loop(trained, batch):
    kwargs = dict(num_beams=1, do_sample=False, min_new_tokens=20, max_new_tokens=20)
    cached = trained.generate(**encoder_inputs(batch), use_cache=True, **kwargs)
    uncached = trained.generate(**encoder_inputs(batch), use_cache=False, **kwargs)
    manual = greedy_without_cache(trained, batch, 20)
    assert cached.shape == (len(SOURCES), 21)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, manual)
    assert len(set(cached[:, 1:].flatten().tolist())) > 3


def test_kv_cache_feeds_one_token_per_step_and_encodes_cross_attention_once(trained, batch):
    layer = trained.decoder.layers[0]
    self_query_lengths: list[int] = []
    cross_key_calls: list[int] = []
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(
            lambda m, i, o: self_query_lengths.append(i[0].shape[1])
        ),
        layer.cross_attn.k_proj.register_forward_hook(lambda m, i, o: cross_key_calls.append(1)),
    ]
    try:
        trained.generate(**encoder_inputs(batch), min_new_tokens=10, max_new_tokens=10, use_cache=True)
        cached_calls = (list(self_query_lengths), len(cross_key_calls))
        self_query_lengths.clear()
        cross_key_calls.clear()
        trained.generate(**encoder_inputs(batch), min_new_tokens=10, max_new_tokens=10, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert cached_calls == ([1] * 10, 1)
    assert self_query_lengths == list(range(1, 11))
    assert len(cross_key_calls) == 10
    out = trained(**encoder_inputs(batch), decoder_input_ids=torch.ones(len(SOURCES), 3, dtype=torch.long))
    assert out[CACHE_FIELD].get_seq_length() == 3


@pytest.mark.parametrize("name", ["past_key_values", "cache"])
def test_forward_continues_a_cache_passed_under_either_name(trained, batch, name):
    """generate() passes the KV cache as `past_key_values` up to transformers 5.23 and as `cache` since 5.24:
    forward must continue whichever it gets (an ignored one would silently restart the cache every step)."""
    tokens = greedy_without_cache(trained, batch, 4)
    with torch.no_grad():
        full = trained(**encoder_inputs(batch), decoder_input_ids=tokens, use_cache=False).logits[:, -1]
        prefix = trained(**encoder_inputs(batch), decoder_input_ids=tokens[:, :-1], use_cache=True)
        cache = prefix[CACHE_FIELD]
        step = trained(
            **encoder_inputs(batch), decoder_input_ids=tokens[:, -1:], use_cache=True, **{name: cache}
        )
    assert step[CACHE_FIELD] is cache
    assert cache.get_seq_length() == tokens.shape[1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        trained(**encoder_inputs(batch), decoder_input_ids=tokens, past_key_values=cache, cache=cache)


def test_beam_search_sampling_and_num_return_sequences(trained, tokenizer, batch):
    n = len(SOURCES)
    beams = trained.generate(**encoder_inputs(batch), num_beams=4, num_return_sequences=3, max_new_tokens=12)
    assert beams.shape[0] == n * 3 and beams.shape[1] <= 13
    # The best beam of a confident model is its greedy output.
    assert tokenizer.batch_decode(beams[::3], skip_special_tokens=True) == TARGETS
    torch.manual_seed(0)
    sampled = trained.generate(
        **encoder_inputs(batch),
        do_sample=True,
        top_k=5,
        temperature=1.5,
        num_return_sequences=2,
        max_new_tokens=12,
    )
    assert sampled.shape[0] == n * 2 and sampled.shape[1] <= 13
    assert (sampled[:, 0] == trained.config.decoder_start_token_id).all()


def test_output_attentions_returns_encoder_decoder_and_cross_attentions(trained, batch):
    out = trained(**encoder_inputs(batch), labels=batch["labels"], output_attentions=True)
    n, src_len = batch["input_ids"].shape
    tgt_len = batch["labels"].shape[1]
    heads = trained.config.num_heads
    assert len(out.encoder_attentions) == trained.config.encoder_layers
    assert len(out.decoder_attentions) == len(out.cross_attentions) == trained.config.decoder_layers
    assert out.encoder_attentions[0].shape == (n, heads, src_len, src_len)
    assert out.decoder_attentions[0].shape == (n, heads, tgt_len, tgt_len)
    assert out.cross_attentions[0].shape == (n, heads, tgt_len, src_len)
    torch.testing.assert_close(out.cross_attentions[1].sum(-1), torch.ones(n, heads, tgt_len))
    # Causal: nothing above the diagonal; padding: no weight on padded source positions.
    assert out.decoder_attentions[0].triu(diagonal=1).abs().max() == 0
    padded = batch["attention_mask"] == 0
    assert padded.any()
    assert out.cross_attentions[0].masked_select(padded[:, None, None, :]).max() == 0
    generated = trained.generate(
        **encoder_inputs(batch), max_new_tokens=4, output_attentions=True, return_dict_in_generate=True
    )
    assert len(generated.encoder_attentions) == trained.config.encoder_layers
    assert len(generated.cross_attentions) == generated.sequences.shape[1] - 1
    assert generated.cross_attentions[-1][0].shape[-2:] == (1, src_len)


def test_no_float64_and_half_precision_forward(trained, batch):
    tensors = dict(trained.named_parameters()) | dict(trained.named_buffers())
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    out = trained(
        **encoder_inputs(batch), labels=batch["labels"], output_attentions=True, output_hidden_states=True
    )
    outputs = [out.logits, *out.encoder_attentions, *out.cross_attentions, *out.decoder_hidden_states]
    assert all(t.dtype == torch.float32 for t in outputs)
    half = JslSeq2SeqForConditionalGeneration(trained.config).to(torch.bfloat16)
    half.load_state_dict(trained.state_dict())
    logits = half(**encoder_inputs(batch), labels=batch["labels"]).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_auto_classes_and_saved_folder_layout(trained, tokenizer, tmp_path):
    folder = save_jsl_model(trained, tokenizer, tmp_path / "model", {"seed": 0})
    names = {path.name for path in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "vocab.json",
        "configuration_jsl.py",
        "modeling_jsl.py",
        "tokenization_jsl.py",
        MANIFEST_NAME,
    } <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_jsl.JslSeq2SeqConfig",
        "AutoModelForSeq2SeqLM": "modeling_jsl.JslSeq2SeqForConditionalGeneration",
    }
    assert config["vocab_hash"] == tokenizer.vocab_hash()
    assert config["training_metadata"]["seed"] == 0
    assert config["training_metadata"]["transformers_version"]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_jsl.JslTokenizer"
    for name in ("configuration_jsl.py", "modeling_jsl.py", "tokenization_jsl.py"):
        source = (folder / name).read_text()
        assert "from hftune" not in source and "import hftune" not in source
    # Locally registered Auto classes resolve without trust_remote_code.
    assert isinstance(AutoConfig.from_pretrained(folder), JslSeq2SeqConfig)
    assert isinstance(AutoTokenizer.from_pretrained(folder), JslTokenizer)
    assert isinstance(AutoModelForSeq2SeqLM.from_pretrained(folder), JslSeq2SeqForConditionalGeneration)


CHILD = textwrap.dedent(
    """
    import json, sys

    class BlockHftune:
        # Simulates a machine without hftune: any import of it fails.
        def find_spec(self, name, path=None, target=None):
            if name == "hftune" or name.startswith("hftune."):
                raise ImportError("hftune is not installed here")

    sys.meta_path.insert(0, BlockHftune())
    try:
        import hftune  # noqa: F401
        sys.exit("hftune import was not blocked")
    except ImportError:
        pass
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    sources_to_load, out_dir, texts, targets = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    for index, source in enumerate(sources_to_load):
        model = AutoModelForSeq2SeqLM.from_pretrained(source, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        batch = tokenizer(texts, text_target=targets, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=2)
        save_file({"logits": logits.contiguous(), "input_ids": batch["input_ids"]}, f"{out_dir}/child-{index}.safetensors")
        print(json.dumps({
            "model_class": type(model).__module__ + "." + type(model).__name__,
            "tokenizer_class": type(tokenizer).__module__ + "." + type(tokenizer).__name__,
            "hftune_loaded": any(name.split(".")[0] == "hftune" for name in sys.modules),
            "decoded": tokenizer.batch_decode(generated, skip_special_tokens=True),
        }))
    """
)
HUB_REPO_ID = "org/jsl-seq2seq"


@pytest.fixture(scope="module")
def fresh_process_loads(
    trained, tokenizer, tmp_path_factory
) -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    """One child process (hftune blocked, offline) loads the saved folder by path and, from a hand-made HF cache
    entry, by repo id; both with trust_remote_code. One process for both keeps the test cheap on 2 cores."""
    tmp_path = tmp_path_factory.mktemp("remote")
    folder = save_jsl_model(trained, tokenizer, tmp_path / "model", {"seed": 0})
    hf_home = tmp_path / "hf_home"
    repo = hf_home / "hub" / "models--org--jsl-seq2seq"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sources = [str(folder), HUB_REPO_ID]
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            json.dumps(sources),
            str(tmp_path),
            json.dumps(SOURCES),
            json.dumps(TARGETS),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    return {
        source: (info, load_file(tmp_path / f"child-{index}.safetensors"))
        for index, (source, info) in enumerate(zip(sources, lines, strict=True))
    }


def assert_same_logits(child: dict[str, torch.Tensor], model, tokenizer) -> None:
    batch = tokenizer(SOURCES, text_target=TARGETS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.equal(child["input_ids"], batch["input_ids"])
    rel = (child["logits"] - logits).abs().max() / logits.abs().max()
    assert rel <= 1e-5


def test_remote_code_loads_in_a_fresh_process_without_hftune(fresh_process_loads, trained, tokenizer):
    (info, tensors), _ = fresh_process_loads.values()
    assert info["model_class"].startswith("transformers_modules.")
    assert info["model_class"].endswith("modeling_jsl.JslSeq2SeqForConditionalGeneration")
    assert info["tokenizer_class"].endswith("tokenization_jsl.JslTokenizer")
    assert not info["hftune_loaded"]
    assert info["decoded"] == TARGETS
    assert_same_logits(tensors, trained, tokenizer)


def test_hub_cache_layout_loads_by_repo_id_offline(fresh_process_loads, trained, tokenizer):
    info, tensors = fresh_process_loads[HUB_REPO_ID]
    assert info["model_class"].endswith("modeling_jsl.JslSeq2SeqForConditionalGeneration")
    assert not info["hftune_loaded"]
    assert info["decoded"] == TARGETS
    assert_same_logits(tensors, trained, tokenizer)


@pytest.mark.parametrize("saved_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_in_fp32(trained, tokenizer, tmp_path, saved_dtype):
    half = JslSeq2SeqForConditionalGeneration(trained.config).to(saved_dtype)
    half.load_state_dict(trained.state_dict())
    folder = save_jsl_model(half, tokenizer, tmp_path / "model", {"precision": str(saved_dtype)})
    loaded, loaded_tokenizer = load_jsl_model(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert not loaded.training
    batch = tokenizer(SOURCES, text_target=TARGETS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = trained(**batch).logits
        restored = loaded(
            **loaded_tokenizer(SOURCES, text_target=TARGETS, padding=True, return_tensors="pt")
        ).logits
    rel = (restored - reference).abs().max() / reference.abs().max()
    assert rel <= 1e-2


def test_load_refuses_truncated_weights_naming_the_file(trained, tokenizer, tmp_path):
    folder = save_jsl_model(trained, tokenizer, tmp_path / "model", {})
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 64)
    with pytest.raises(HftuneError, match=r"model\.safetensors does not match its sha256"):
        load_jsl_model(folder)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(HftuneError, match=r"model\.safetensors is not a readable safetensors file"):
        load_jsl_model(folder)


def test_load_refuses_a_tokenizer_whose_vocab_hash_differs(trained, tokenizer, tmp_path):
    folder = save_jsl_model(trained, tokenizer, tmp_path / "model", {})
    loaded, _ = load_jsl_model(folder)
    assert loaded.config.vocab_hash == tokenizer.vocab_hash()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    first, second = sorted(vocab, key=vocab.get)[4:6]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(HftuneError, match=r"vocab\.json does not belong to these weights"):
        load_jsl_model(folder)


def test_failed_save_keeps_the_previous_folder(trained, tokenizer, tmp_path, monkeypatch):
    folder = save_jsl_model(trained, tokenizer, tmp_path / "model", {"run": 1})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(JslTokenizer, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_jsl_model(trained, tokenizer, folder, {"run": 2})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    monkeypatch.undo()
    save_jsl_model(trained, tokenizer, folder, {"run": 3})
    assert json.loads((folder / "config.json").read_text())["training_metadata"]["run"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_refuses_a_tokenizer_of_another_size(trained, tmp_path):
    other = JslTokenizer.build_from_pairs(PAIRS[:2])
    with pytest.raises(HftuneError, match="vocab_size"):
        save_jsl_model(trained, other, tmp_path / "model", {})
    assert not (tmp_path / "model").exists()


# -- fingerspelling copy head (config.spelling_copy) -------------------------------------------------------------

SPELLED = [
    ("ケンジさんはあした来ます", "<指:ケ> <指:ン> <指:ジ> <明日> <来る>"),
    ("りなさんは学生です", "<指:リ> <指:ナ> <学生>"),
    ("マリアはコーヒーが好き", "<指:マ> <指:リ> <指:ア> <指:コ> <指:ー> <指:ヒ> <指:ー> <好き>"),
]


@pytest.fixture(scope="module")
def copying():
    """A random tiny model with the copy head over every `<指:*>` gloss of a vocabulary that holds them."""
    from hftune.jsl.train import spelling_sources

    tokenizer = JslTokenizer.build_from_pairs(PAIRS + SPELLED)
    sources = spelling_sources(tokenizer)
    torch.manual_seed(0)
    model = JslSeq2SeqForConditionalGeneration(
        tiny_config(tokenizer, spelling_sources=sources, spelling_copy=True)
    ).eval()
    batch = tokenizer([ja for ja, _ in SPELLED] + ["学生です"], padding=True, return_tensors="pt")
    return model, tokenizer, batch


def test_copy_head_joins_each_spelling_glosss_score_with_pointers_at_its_kana(copying):
    """Recomputed by hand: a spelling gloss scores logaddexp(lm_head, log sum exp(q.k_j / sqrt(d))) over the input
    positions j holding its katakana or hiragana; every other logit is lm_head's. An input without kana gets
    lm_head's logits."""
    model, tokenizer, batch = copying
    decoder_input_ids = torch.tensor([[1, 5, 6]] * batch["input_ids"].shape[0])
    with torch.no_grad():
        out = model(**encoder_inputs(batch), decoder_input_ids=decoder_input_ids, output_hidden_states=True)
        hidden = out.decoder_hidden_states[-1]
        plain = model.lm_head(hidden)
        # The query: the decoder state and the embedding of the gloss it was fed; each key: its position's encoder
        # state and the one before (zeros before the first).
        fed = model.get_input_embeddings()(decoder_input_ids) * model.config.d_model**0.5
        query = model.copy_query(torch.cat([hidden, fed], dim=-1))
        encoded = out.encoder_last_hidden_state
        before = torch.cat([torch.zeros_like(encoded[:, :1]), encoded[:, :-1]], dim=1)
        keys = model.encoder.copy_key(torch.cat([encoded, before], dim=-1))
    scores = query @ keys.transpose(1, 2) / model.config.d_model**0.5
    glosses = {entry[0]: entry[1:] for entry in model.config.spelling_sources}
    expected = plain.clone()
    copied_somewhere = 0
    for row, ids in enumerate(batch["input_ids"].tolist()):
        for gloss, source_ids in glosses.items():
            positions = [j for j, i in enumerate(ids) if i in source_ids]
            if positions:
                copied = torch.logsumexp(scores[row][:, positions], dim=-1)
                expected[row, :, gloss] = torch.logaddexp(plain[row, :, gloss], copied)
                copied_somewhere += 1
    # Glosses with kana in each input: ケンジ + あ, ま (5); り, な, ん (3); マリア + コ, ー, ヒ (6); none in 学生です.
    assert copied_somewhere == 5 + 3 + 6
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out.logits[-1], plain[-1]
    )  # ありがとう holds no katakana, and あ is not spelled here


def test_copy_head_generation_cache_beams_and_reload(copying, tmp_path):
    """The copy keys and map ride in the encoder output: the cached decoder, beam search (which repeats them per
    beam) and a saved-and-reloaded model all give the uncached model's outputs."""
    model, tokenizer, batch = copying
    kwargs = dict(num_beams=1, do_sample=False, min_new_tokens=8, max_new_tokens=8, bound_output_length=False)
    cached = model.generate(**encoder_inputs(batch), use_cache=True, **kwargs)
    uncached = model.generate(**encoder_inputs(batch), use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_without_cache(model, batch, 8))
    beams = model.generate(**encoder_inputs(batch), num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert beams.shape[0] == 2 * batch["input_ids"].shape[0]
    folder = save_jsl_model(model, tokenizer, tmp_path / "model", {"seed": 0})
    reloaded, _ = load_jsl_model(folder)
    assert reloaded.config.spelling_copy
    with torch.no_grad():
        decoder_input_ids = cached[:, :-1]
        before = model(**encoder_inputs(batch), decoder_input_ids=decoder_input_ids).logits
        after = reloaded(**encoder_inputs(batch), decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_copy_head_needs_spelling_sources_and_its_encoder_output(copying):
    model, _, batch = copying
    with pytest.raises(ValueError, match="spelling_copy=True needs spelling_sources"):
        JslSeq2SeqConfig(spelling_copy=True)
    with torch.no_grad():
        hidden = model.get_encoder()(**encoder_inputs(batch)).last_hidden_state
        with pytest.raises(ValueError, match="pass encoder_outputs as the model's encoder returns them"):
            model(
                attention_mask=batch["attention_mask"],
                encoder_outputs=(hidden,),
                decoder_input_ids=batch["input_ids"][:, :1],
            )
