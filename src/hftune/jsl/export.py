"""Look inside a trained JSL model: attention maps and single weight tensors as CSV (and heatmap PNGs).

Attention CSVs have the key tokens as the header row and one row per query token, so a spreadsheet shows the
matrix with its labels. Files: `example{i}_{encoder|decoder|cross}_layer{l}_head{h}.csv`, one PNG per example
and attention kind (a grid of layers x heads), and `examples.json` with each example's tokens and gloss.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from hftune.errors import HftuneError
from hftune.runtime import warn

DEFAULT_ATTENTION_INPUTS: tuple[str, ...] = ("ありがとう", "わたしはたべます", "きのう図書館に行きました")
# Fonts with Japanese glyphs on Windows, macOS and Linux; without one the heatmaps label positions by number.
_CJK_FONT_HINTS = (
    "Noto Sans CJK",
    "Noto Sans JP",
    "IPAGothic",
    "IPAexGothic",
    "Hiragino",
    "Yu Gothic",
    "MS Gothic",
)


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    for font in font_manager.fontManager.ttflist:
        if any(hint in font.name for hint in _CJK_FONT_HINTS):
            return font.name
    return None


def _write_matrix_csv(path: Path, row_labels: Sequence[str], column_labels: Sequence[str], matrix) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", *column_labels])
        for label, row in zip(row_labels, matrix.tolist(), strict=True):
            writer.writerow([label, *(f"{value:.6g}" for value in row)])


def _heatmaps(
    path: Path, maps: torch.Tensor, rows: Sequence[str], columns: Sequence[str], title: str
) -> None:
    """`maps` (layers, heads, queries, keys) as a grid of heatmaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font()
    layers, heads = maps.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(2.6 * heads + 1, 2.4 * layers + 1), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(len(columns)))
            ax.set_yticks(range(len(rows)))
            if font:
                ax.set_xticklabels(columns, fontsize=6, rotation=90, fontfamily=font)
                ax.set_yticklabels(rows, fontsize=6, fontfamily=font)
            else:
                ax.tick_params(labelsize=6)
    fig.suptitle(title + ("" if font else " (token positions; token names in the CSVs)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def export_attentions(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], out_dir: str | Path, max_length: int = 24
) -> list[Path]:
    """Attention maps of each input (greedy output fed back with teacher forcing) as CSVs and PNGs in
    `out_dir`. Inputs longer than `max_length` characters are skipped with a warning: their maps are
    unreadable. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    examples = []
    device = next(model.parameters()).device
    model.eval()
    for text in texts:
        source = tokenizer.tokenize(text)
        if not source:
            warn(f"attention export skips the empty input {text!r}")
            continue
        if len(source) > max_length:
            warn(
                f"attention export skips {text[:20]!r}...: {len(source)} characters is over the limit of "
                f"{max_length} (raise --attention_max_length to include it)"
            )
            continue
        index = len(examples)
        batch = tokenizer([text], return_tensors="pt").to(device)
        with torch.inference_mode():
            generated = model.generate(**batch, num_beams=1, do_sample=False)
            decoder_ids = generated[:, :-1] if generated[0, -1] == tokenizer.eos_token_id else generated
            out_attn = model(**batch, decoder_input_ids=decoder_ids, output_attentions=True)
        source_tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
        target_tokens = tokenizer.convert_ids_to_tokens(decoder_ids[0].tolist())
        kinds = {
            "encoder": (out_attn.encoder_attentions, source_tokens, source_tokens),
            "decoder": (out_attn.decoder_attentions, target_tokens, target_tokens),
            "cross": (out_attn.cross_attentions, target_tokens, source_tokens),
        }
        for kind, (layers, rows, columns) in kinds.items():
            maps = torch.stack([layer[0] for layer in layers]).float().cpu()  # (layers, heads, q, k)
            for layer in range(maps.shape[0]):
                for head in range(maps.shape[1]):
                    path = out / f"example{index}_{kind}_layer{layer}_head{head}.csv"
                    _write_matrix_csv(path, rows, columns, maps[layer, head])
                    written.append(path)
            png = out / f"example{index}_{kind}.png"
            _heatmaps(png, maps, rows, columns, f"example {index}: {kind} attention")
            written.append(png)
        gloss = tokenizer.decode(generated[0], skip_special_tokens=True)
        examples.append({"index": index, "text": text, "source_tokens": source_tokens, "gloss": gloss})
    if examples:
        path = out / "examples.json"
        path.write_text(json.dumps(examples, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


def check_weight_name(model: torch.nn.Module, name: str) -> None:
    """Refuse a parameter name the model does not have, listing the closest real names."""
    names = list(model.state_dict())
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"close names: {', '.join(close)}" if close else f"names look like {names[0]}"
    raise HftuneError(
        f"--export_weights {name!r} is not a parameter of the JSL model ({hint}); "
        "metrics.json lists every parameter name"
    )


def export_weights(model: torch.nn.Module, name: str, out_dir: str | Path) -> Path:
    """One named parameter as `out_dir/<name>.csv`: a matrix as rows x columns, a vector as one column with its
    index (tensors with more axes are flattened after the first)."""
    check_weight_name(model, name)
    tensor = model.state_dict()[name].detach().float().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if tensor.dim() <= 1:
            writer.writerow(["index", "value"])
            writer.writerows([i, f"{v:.8g}"] for i, v in enumerate(tensor.reshape(-1).tolist()))
        else:
            matrix = tensor.reshape(tensor.shape[0], -1)
            writer.writerow(["row", *range(matrix.shape[1])])
            writer.writerows([i, *(f"{v:.8g}" for v in row)] for i, row in enumerate(matrix.tolist()))
    return path
