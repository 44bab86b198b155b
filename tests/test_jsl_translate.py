"""`translate` and `hftune translate`: arguments, files and stdin, one output line per input line, bad input,
and refusal of damaged model folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hftune.cli import main as hftune_main
from hftune.jsl.artifacts import load_jsl_model, save_jsl_model
from hftune.jsl.corpus import load_jsl_corpus
from hftune.jsl.modeling_jsl import JslSeq2SeqForConditionalGeneration, output_length_limits, periodic_tail
from hftune.jsl.onnx_export import output_limits
from hftune.jsl.train import JslArguments, build_model, build_tokenizer, gloss_tokens, set_generation_config
from hftune.jsl.translate import translate, unknown_characters

TRAIN_PAIRS = 48


def train_tiny_jsl_folder(folder: Path) -> Path:
    """A tiny model fitted for a few seconds on real corpus pairs, saved the way the recipe saves it."""
    train = load_jsl_corpus("train").select(range(TRAIN_PAIRS))
    args = JslArguments(d_model=64, num_heads=4, encoder_layers=1, decoder_layers=1, d_ff=128, dropout=0.0)
    tokenizer = build_tokenizer(train, args.max_source_length)
    model = build_model(tokenizer, args, seed=0)
    batch = tokenizer(list(train["ja"]), text_target=list(train["gloss"]), padding=True, return_tensors="pt")
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    set_generation_config(model, tokenizer, for_trainer=False)
    return save_jsl_model(model, tokenizer, folder, {"seed": 0})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: a second thread only adds contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folder(one_thread, tmp_path_factory) -> Path:
    return train_tiny_jsl_folder(tmp_path_factory.mktemp("jsl") / "model")


@pytest.fixture(scope="module")
def loaded(folder):
    return load_jsl_model(folder)


def is_gloss_string(text: str, allowed: set[str]) -> bool:
    return all(token in allowed for token in text.split()) and text == " ".join(text.split())


def test_translate_keeps_order_and_length_and_emits_only_glosses(loaded):
    model, tokenizer = loaded
    corpus = load_jsl_corpus("train").select(range(TRAIN_PAIRS))
    texts = list(corpus["ja"])
    glosses = translate(texts, model, tokenizer, batch_size=7)
    assert len(glosses) == len(texts)
    allowed = set(gloss_tokens(tokenizer))
    assert all(glosses) and all(is_gloss_string(g, allowed) for g in glosses)
    # Batching and length-sorting do not change a sentence's output.
    one_by_one = [translate([text], model, tokenizer)[0] for text in texts[:4]]
    assert glosses[:4] == one_by_one
    # The model learnt its training pairs: most come out exactly right.
    exact = sum(g == ref for g, ref in zip(glosses, corpus["gloss"], strict=True))
    assert exact >= 40
    beams = translate(texts[:8], model, tokenizer, num_beams=3)
    assert all(is_gloss_string(g, allowed) for g in beams)


def test_empty_unknown_and_over_long_input(loaded, capsys):
    model, tokenizer = loaded
    long_text = "わたしはたべます" * 40
    texts = ["", "   ", "ありがとう", "𓀀🙂\x07ЖЖ", long_text]
    glosses = translate(texts, model, tokenizer)
    assert glosses[:2] == ["", ""]
    assert glosses[2] and glosses[3] is not None and glosses[4]
    err = capsys.readouterr().err
    assert "1 input(s) longer than the model's 64 characters were truncated" in err
    assert "input 5, 320 characters" in err
    assert all(is_gloss_string(g, set(gloss_tokens(tokenizer))) for g in glosses)
    # Unknown characters are <unk> on the input side, not an error.
    unknown = tokenizer("𓀀🙂")["input_ids"]
    assert unknown == [tokenizer.unk_token_id] * 2 + [tokenizer.eos_token_id]
    # Truncation keeps the first characters: the long input translates like its 64-character prefix.
    assert glosses[4] == translate([long_text[:64]], model, tokenizer)[0]


def test_bad_generation_settings_are_refused(loaded):
    from hftune.errors import HftuneError

    model, tokenizer = loaded
    with pytest.raises(HftuneError, match="--num_beams 0"):
        translate(["ありがとう"], model, tokenizer, num_beams=0)
    with pytest.raises(HftuneError, match="--batch_size 0"):
        translate(["ありがとう"], model, tokenizer, batch_size=0)


def run_cli(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hftune.cli", "translate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_arguments_file_and_stdin(folder, loaded, tmp_path):
    model, tokenizer = loaded
    lines = ["ありがとう", "", "きのう図書館に行きました", "🙂", "わたしはたべます" * 10]
    expected = translate(lines, model, tokenizer)

    by_args = run_cli(["--model", str(folder), "--device", "cpu", "ありがとう", "きのう図書館に行きました"])
    assert by_args.returncode == 0, by_args.stderr
    assert by_args.stdout.splitlines() == [expected[0], expected[2]]

    path = tmp_path / "input.txt"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    by_file = run_cli(["--model", str(folder), "--input_file", str(path), "--batch_size", "2"])
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout.split("\n") == [*expected, ""]
    assert "truncated (first: input 5, 80 characters)" in by_file.stderr

    by_stdin = run_cli(["--model", str(folder)], stdin="\n".join(lines))
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout.split("\n") == [*expected, ""]


def cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        hftune_main(["translate", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_cli_refuses_an_altered_vocabulary_naming_the_file(folder, tmp_path, capsys):
    copy = copy_folder(folder, tmp_path)
    vocab = json.loads((copy / "vocab.json").read_text(encoding="utf-8"))
    vocab["<新しい>"] = len(vocab) - 1  # a token renumbered: the ids no longer mean what the weights learnt
    (copy / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    err = cli_error(["--model", str(copy), "ありがとう"], capsys)
    assert f"{copy / 'vocab.json'} does not belong to these weights" in err


def test_cli_refuses_truncated_weights_naming_the_file(folder, tmp_path, capsys):
    copy = copy_folder(folder, tmp_path)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    err = cli_error(["--model", str(copy), "ありがとう"], capsys)
    assert f"{weights} does not match its sha256" in err


def test_cli_input_errors(folder, tmp_path, capsys):
    assert "does not exist" in cli_error(
        ["--model", str(folder), "--input_file", str(tmp_path / "no.txt")], capsys
    )
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    assert "is not UTF-8 text" in cli_error(["--model", str(folder), "--input_file", str(latin1)], capsys)
    assert "not both" in cli_error(
        ["--model", str(folder), "--input_file", str(latin1), "ありがとう"], capsys
    )
    assert "is neither a folder nor a valid Hub repo id" in cli_error(
        ["--model", str(tmp_path / "missing"), "ありがとう"], capsys
    )


def test_mostly_unknown_input_is_left_untranslated_and_says_so(folder, loaded, capsys):
    model, tokenizer = loaded
    texts = ["ЖЖЖЖ私", "ありがとう", "ЖЖ私は"]
    assert unknown_characters(texts[0], tokenizer) == (["Ж"] * 4, 0.8)
    glosses = translate(texts, model, tokenizer)
    assert glosses[0] == "" and glosses[1] and glosses[2]  # 2 of 4 unknown is not "mostly"
    err = capsys.readouterr().err
    assert "1 input(s) are mostly characters the model never saw and were left untranslated" in err
    assert "(first: input 1, 80% unknown)" in err
    assert (
        translate(texts[:1], model, tokenizer, max_unknown_share=1.0)[0] != ""
    )  # opt out: translated anyway

    result = run_cli(["--model", str(folder), "--json", *texts])
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == texts and [r["gloss"] for r in records] == glosses
    assert records[0]["untranslated"] is True and records[0]["unknown_characters"] == ["Ж"]
    assert records[0]["unknown_share"] == 0.8 and records[1]["unknown_share"] == 0.0
    assert [r["untranslated"] for r in records[1:]] == [False, False]
    assert "left untranslated" in result.stderr
    assert run_cli(["--model", str(folder), "--max_unknown_share", "1.5", "x"]).returncode == 2


def test_output_length_is_bounded_by_the_input_length(loaded):
    """An untrained model never stops on its own: every row must end at floor(ratio x characters) + slack
    tokens, greedy or beam search, and the ONNX decoders compute the same limits."""
    _, tokenizer = loaded
    trained, _ = loaded
    config = trained.config.__class__.from_dict(trained.config.to_dict())
    config.output_length_ratio, config.output_length_slack, config.output_length_spelling = 0.7, 1, False
    torch.manual_seed(0)
    model = JslSeq2SeqForConditionalGeneration(config).eval()
    model.generation_config = trained.generation_config
    texts = ["あ", "ありがとう", "きのう図書館に行きました", "わたしはたべます" * 3]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    limits = output_length_limits(config, batch["input_ids"], batch["attention_mask"])
    characters = [len(tokenizer.tokenize(t)) for t in texts]
    assert limits.tolist() == [int(0.7 * n) + 1 for n in characters]
    for kwargs in ({"num_beams": 1}, {"num_beams": 3, "num_return_sequences": 2}):
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=False, max_new_tokens=40, **kwargs)
        rows = out[:, 1:].tolist()
        per_input = len(rows) // len(texts)
        for index, row in enumerate(rows):
            limit = int(limits[index // per_input])
            assert tokenizer.eos_token_id in row[: limit + 1], (kwargs, index, row)
    with torch.inference_mode():
        unbounded = model.generate(**batch, do_sample=False, max_new_tokens=40, bound_output_length=False)
    assert unbounded.shape[1] > out.shape[1]  # the bound, not the model, ended the rows
    # A looping tail (period 1 or 2 over 6 tokens) ends a row too; no corpus gloss sequence has one.
    tails = torch.tensor([[5, 7, 5, 7, 5, 7], [9, 9, 9, 9, 9, 9], [5, 7, 5, 7, 5, 8], [1, 2, 3, 1, 2, 3]])
    assert periodic_tail(tails).tolist() == [True, True, False, False]
    assert periodic_tail(tails[:, :5]).tolist() == [False] * 4
    settings = {"output_length_ratio": 0.7, "output_length_slack": 1}
    arrays = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert output_limits(*arrays, settings).tolist() == limits.tolist()
    assert output_limits(*arrays, {"output_length_ratio": None}) is None
    # output_length_spelling (the recipe's models): a kana that a spelling gloss spells counts one whole token,
    # since a fingerspelled word takes one gloss per kana; the other characters count 0.7.
    assert trained.config.output_length_spelling and trained.config.spelling_sources
    config.output_length_spelling = True
    spelled_ids = {i for entry in config.spelling_sources for i in entry[1:]}
    kana = [sum(i in spelled_ids for i in ids) for ids in batch["input_ids"].tolist()]
    assert any(0 < k < n for n, k in zip(characters, kana, strict=True))  # kana and other characters
    spelled = output_length_limits(config, batch["input_ids"], batch["attention_mask"])
    assert spelled.tolist() == [int(0.7 * (n - k)) + k + 1 for n, k in zip(characters, kana, strict=True)]
    settings |= {"output_length_spelling": True, "spelling_sources": config.spelling_sources}
    assert output_limits(*arrays, settings).tolist() == spelled.tolist()


def test_spelling_budget_spends_each_input_kana_once(loaded):
    """A model pushed to spell <指:カ> forever emits it exactly as often as the input holds カ or か (greedy and
    beam search), and the ONNX decoders count the same budgets."""
    from transformers import LogitsProcessor

    from hftune.jsl.modeling_jsl import spelling_budgets
    from hftune.jsl.onnx_export import spelling_budgets as onnx_budgets
    from hftune.jsl.tokenization_jsl import JslTokenizer
    from hftune.jsl.train import spelling_sources

    model, tokenizer = loaded
    tokenizer = JslTokenizer(vocab=dict(tokenizer.get_vocab()))
    tokenizer.add_symbols(["カ", "か", "<指:カ>"])
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.vocab_size = len(tokenizer)
    config.spelling_sources = spelling_sources(tokenizer)
    gloss = tokenizer.convert_tokens_to_ids("<指:カ>")
    assert [
        gloss,
        tokenizer.convert_tokens_to_ids("カ"),
        tokenizer.convert_tokens_to_ids("か"),
    ] in config.spelling_sources
    torch.manual_seed(0)
    spelling = JslSeq2SeqForConditionalGeneration(config).eval()

    class PreferSpelling(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, gloss] += 1e4
            return scores

    texts = ["カカか", "あ", "かいぎ"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    for kwargs in ({"num_beams": 1}, {"num_beams": 2}):
        with torch.inference_mode():
            out = spelling.generate(
                **batch, do_sample=False, max_new_tokens=8, logits_processor=[PreferSpelling()], **kwargs
            )
        assert [row.tolist().count(gloss) for row in out] == [3, 0, 1], kwargs
    glosses, counts = spelling_budgets(config, batch["input_ids"], batch["attention_mask"])
    settings = {"spelling_sources": config.spelling_sources}
    numpy_glosses, numpy_counts = onnx_budgets(
        batch["input_ids"].numpy(), batch["attention_mask"].numpy(), settings
    )
    assert numpy_glosses.tolist() == glosses.tolist() and numpy_counts.tolist() == counts.tolist()
    assert counts[:, glosses.tolist().index(gloss)].tolist() == [3, 0, 1]


def test_generation_cap_leaves_the_output_bound_to_decide():
    """Saved models cap generation one token above the longest output their bound allows (a long loanword-heavy
    input spells more glosses than a training pair holds), so a gloss ends by </s>, the loop stop or the bound."""
    from hftune.jsl.configuration_jsl import JslSeq2SeqConfig
    from hftune.jsl.train import generation_cap

    shape = dict(max_source_length=65, max_target_length=33, output_length_slack=3)
    spelled = JslSeq2SeqConfig(
        **shape, output_length_ratio=0.8, output_length_spelling=True, spelling_sources=[[10, 11, 12]]
    )
    assert generation_cap(spelled) == 64 + 3 + 1  # every one of the 64 characters may be a spelled kana
    assert generation_cap(JslSeq2SeqConfig(**shape, output_length_ratio=0.8)) == int(0.8 * 64) + 3 + 1
    assert (
        generation_cap(JslSeq2SeqConfig(**shape, output_length_ratio=None)) == 33
    )  # no bound: the pairs' limit
