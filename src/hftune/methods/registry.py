"""The one table of fine-tuning methods: name -> how it is applied, planned and trained, and what it leaves.

A method is a function plus a registration in its own module of this package (`register(Method(...))` at the
module's end); `hftune.methods` imports every module here, so the recipes, `hftune plan`, the leaderboard and
`hftune evaluate` see a new method without any other change. What a saved run holds is an `Artifact`: how to
recognise its folder and how to load it back as a classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftune.errors import HftuneError


@dataclass(frozen=True)
class PlanSettings:
    """What `hftune plan` knows of a run when it counts the parameters a method trains."""

    freeze_layers: int | None = None
    lora_r: int = 8
    lora_target_modules: list[str] | None = None
    causal_lm: bool = False


@dataclass(frozen=True)
class Artifact:
    name: str  # results.json's `artifact`
    marker_file: str  # a file only this kind of folder holds
    load: Callable[..., Any] | None = (
        None  # (folder, labels) -> model returning logits, for `hftune evaluate`
    )


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line, for cards and `hftune plan --help`
    artifact: str  # the Artifact name a run of this method saves
    apply: Callable[..., Any]  # (model, method arguments) -> model with exactly the trained parameters
    plan: Callable[[Any, PlanSettings], Any]  # (model, settings) -> model prepared as the recipe would
    recipe: str | None = None  # the recipe file in recipes/ that trains it
    recipe_flags: tuple[
        str, ...
    ] = ()  # flags the leaderboard adds to the recipe ({lower_half}: half the layers)
    recipe_default: bool = True  # the method a plain run of `recipe` trains
    quantization: str | None = None  # "4bit" for QLoRA: the memory estimate counts packed weights
    on_leaderboard: bool = True  # trained by `hftune leaderboard --run` by default
    quoted_share: str | None = None  # trainable share the user's notes quote, shown beside the measured one
    notes: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {}
ARTIFACTS: dict[str, Artifact] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def register_artifact(artifact: Artifact) -> Artifact:
    ARTIFACTS[artifact.name] = artifact
    return artifact


def get_method(name: str, flag: str = "--method") -> Method:
    if name not in METHODS:
        raise HftuneError(f"{flag} {name!r} is not a method hftune knows; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_for_recipe(recipe: str | Path) -> Method | None:
    """The method a recipe file trains when run without method flags (sentiment_lora.py -> lora)."""
    name = Path(recipe).name
    return next((m for m in METHODS.values() if m.recipe == name and m.recipe_default), None)


def artifact_of_folder(folder: Path) -> str | None:
    """The artefact a saved folder holds, recognised by its marker file (None when none matches)."""
    for artifact in ARTIFACTS.values():
        if (folder / artifact.marker_file).is_file():
            return artifact.name
    return None
