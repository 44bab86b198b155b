"""Rebuild this folder's sample from the full emotion files: `python make_sample.py FULL_DIR`.

Each split keeps every label's share of the full file (largest-remainder rounding) by taking that label's first rows in file
order, and keeps the file order; the full files are already shuffled, so this is a stratified sample.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

SIZES = {"train.txt": 480, "validation.txt": 240}


def stratified_head(lines: list[str], size: int) -> list[str]:
    labels = [line.rsplit(";", 1)[1] for line in lines]
    # Largest remainder: shares rounded down, then the leftover rows to the largest fractions.
    shares = {label: count * size / len(lines) for label, count in Counter(labels).items()}
    quota = {label: int(share) for label, share in shares.items()}
    leftover = size - sum(quota.values())
    for label in sorted(shares, key=lambda k: shares[k] - quota[k], reverse=True)[:leftover]:
        quota[label] += 1
    kept: list[str] = []
    for line, label in zip(lines, labels, strict=True):
        if quota[label] > 0:
            quota[label] -= 1
            kept.append(line)
    return kept


def main(full_dir: Path) -> None:
    here = Path(__file__).resolve().parent
    for name, size in SIZES.items():
        header, *rows = (full_dir / name).read_text(encoding="utf-8").splitlines()
        sample = stratified_head(rows, size)
        (here / name).write_text("\n".join([header, *sample]) + "\n", encoding="utf-8")
        print(f"{name}: {len(sample)} rows, {dict(Counter(r.rsplit(';', 1)[1] for r in sample))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
