"""Fine-tuning methods. Each is a function `apply_<method>(model, args) -> model` that decides which parameters
train (the Trainer then optimises exactly those left with `requires_grad=True`), registered in
`hftune.methods.registry`. Importing this package imports every method module, which registers it.
"""

import importlib
import pkgutil

from hftune.methods.registry import ARTIFACTS, METHODS, Method, PlanSettings, get_method, method_for_recipe

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "parts"):
        importlib.import_module(f"{__name__}.{_module.name}")

from hftune.methods.bitfit import apply_bitfit, load_bitfit, save_bitfit  # noqa: E402
from hftune.methods.features import apply_features  # noqa: E402
from hftune.methods.full import apply_freeze, apply_full  # noqa: E402
from hftune.methods.lora import apply_lora, lora_config, lora_target_modules, quantization_config  # noqa: E402
from hftune.methods.parts import (  # noqa: E402
    base_model_prefix,
    embedding_module,
    encoder_layers,
    head_module_names,
    head_parameter_names,
)

__all__ = [
    "ARTIFACTS",
    "METHODS",
    "Method",
    "PlanSettings",
    "apply_bitfit",
    "apply_features",
    "apply_freeze",
    "apply_full",
    "apply_lora",
    "base_model_prefix",
    "embedding_module",
    "encoder_layers",
    "get_method",
    "head_module_names",
    "head_parameter_names",
    "load_bitfit",
    "lora_config",
    "lora_target_modules",
    "method_for_recipe",
    "quantization_config",
    "save_bitfit",
]
