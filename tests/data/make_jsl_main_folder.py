"""Writes tests/data/jsl_main_folder: a tiny JSL model saved by hftune's main branch as of issue 18 (commit
b33aba6), with the greedy glosses and logits that code produced, so tests can prove that later versions load
and translate old folders identically. Run it with main's code on the path, not this branch's:

    PYTHONPATH=/path/to/main/src python tests/data/make_jsl_main_folder.py
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hftune.jsl.artifacts import save_jsl_model
from hftune.jsl.corpus import load_jsl_corpus
from hftune.jsl.train import JslArguments, build_model, build_tokenizer, set_generation_config
from hftune.jsl.translate import translate

OUT = Path(__file__).resolve().parent / "jsl_main_folder"
LONG = (
    "きのうわたしはともだちとがっこうのとしょかんでほんをよみましたがとてもおもしろかったのでまたいきたいです"
)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = load_jsl_corpus("train").select(range(48))
    args = JslArguments(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=1, d_ff=64, dropout=0.0)
    tokenizer = build_tokenizer(train, args.max_source_length)
    model = build_model(tokenizer, args, seed=0)
    batch = tokenizer(list(train["ja"]), text_target=list(train["gloss"]), padding=True, return_tensors="pt")
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    set_generation_config(model, tokenizer, for_trainer=False)
    shutil.rmtree(OUT, ignore_errors=True)
    save_jsl_model(model, tokenizer, OUT / "model", {"seed": 0, "dataset": "hftune-jsl-corpus"})
    texts = [*train["ja"][:8], *load_jsl_corpus("test")["ja"][:8], LONG]
    glosses = translate(texts, model, tokenizer)
    encoded = tokenizer(texts, text_target=glosses, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: encoded[k] for k in ("input_ids", "attention_mask", "labels")}).logits
    save_file({"logits": logits.contiguous()}, OUT / "expected_logits.safetensors")
    (OUT / "expected.json").write_text(
        json.dumps(
            {"texts": texts, "glosses": glosses, "written_by": sys.argv[1:] or None},
            ensure_ascii=False,
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
