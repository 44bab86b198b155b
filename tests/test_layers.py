"""The package's layers: every import of an hftune module (function-level ones included) points to the same
layer or one below, no import cycle exists, the JSL model files import only torch and transformers, and
`import hftune` / `hftune --help` do not import torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hftune"

# Lowest first. A module may import its own layer (without cycles) or any layer below.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "runtime"),
    ("config", "persistence", "results", "hardware", "metrics"),
    ("data", "models", "methods", "reporting"),
    ("memory", "training"),
    ("tasks", "jsl"),
    ("evaluation", "hub"),
    ("cli", "launch"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Travel to the Hub as remote code: they may import only torch, transformers and each other.
JSL_MODEL_FILES = ("configuration_jsl.py", "modeling_jsl.py", "tokenization_jsl.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> set[str]:
    """Every hftune module `path` imports, at any depth of the file (functions included)."""
    found = set()
    me = module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hftune.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")[: len(me.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hftune."):
                found.add(target)
    return found


def layer_of(module: str) -> str:
    top = module.split(".")[1]
    assert top in RANK, f"{module}: top-level name {top!r} is in no layer of this test; add it to LAYERS"
    return top


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    if path == PACKAGE / "__init__.py":
        return
    mine = layer_of(module_name(path))
    for target in own_imports(path):
        theirs = layer_of(target)
        assert RANK[theirs] <= RANK[mine], (
            f"{module_name(path)} (layer {RANK[mine]}: {mine}) imports {target} (layer {RANK[theirs]}: {theirs}), "
            "an upward import"
        )


def test_no_import_cycles():
    graph = {}
    for path in MODULES:
        me = module_name(path)
        targets = set()
        for target in own_imports(path):
            # a package's __init__ importing its own children is not a dependency of the children on it
            if path.name == "__init__.py" and target.startswith(me + "."):
                continue
            while target not in {module_name(p) for p in MODULES} and "." in target:
                target = target.rsplit(".", 1)[0]
            targets.add(target)
        graph[me] = targets - {me}
    cycles = []
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", JSL_MODEL_FILES)
def test_jsl_model_files_import_only_torch_and_transformers(name):
    tree = ast.parse((PACKAGE / "jsl" / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue  # each other
        roots = (
            [a.name.split(".")[0] for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module.split(".")[0]]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        allowed = {"torch", "transformers", "__future__", "dataclasses", "math", "typing", "hashlib", "json",
                   "os", "unicodedata", "collections"}  # fmt: skip
        assert set(roots) <= allowed, (
            f"jsl/{name} imports {roots}: remote code may use torch and transformers only"
        )


def test_import_hftune_and_help_do_not_import_torch():
    code = "import sys, hftune, hftune.cli; hftune.cli.main(['--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout
