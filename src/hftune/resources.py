"""Find the folders shipped beside the code: recipes, accelerate configs, model-card templates."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_DIR.parents[1]


def resource_dir(name: str) -> Path:
    """`name` is one of `recipes`, `accelerate_configs`, `hub_cards`.

    An installed wheel carries them under `hftune/_resources/`; a clone (or editable install) has them
    at the repository root.
    """
    for candidate in (_PACKAGE_DIR / "_resources" / name, _CHECKOUT_ROOT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hftune resource folder {name!r} not found next to {_PACKAGE_DIR}")
