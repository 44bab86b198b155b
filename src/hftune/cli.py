"""`hftune VERB ...`: thin dispatch to the functions the recipes use too.

Each verb lives in the module that owns its concern and is imported only when called, so
`hftune --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from hftune.errors import exit_on_user_error

# verb -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
VERBS: dict[str, tuple[str, str]] = {
    "train": (
        "hftune.launch:train_command",
        "run a recipe under accelerate launch, config picked for this machine",
    ),
    "plan": ("hftune.memory:plan_command", "estimate peak training memory and fit a run to a budget"),
    "publish": ("hftune.hub:publish_command", "upload a run folder to the Hub (or HF_ENDPOINT)"),
    "evaluate": ("hftune.evaluation:evaluate_command", "score a saved run or repo on a dataset"),
    "leaderboard": ("hftune.reporting.leaderboard:leaderboard_command", "compare runs side by side"),
    "translate": ("hftune.jsl.translate:translate_command", "Japanese -> JSL gloss with a saved model"),
    "export": ("hftune.jsl.onnx_export:export_command", "JSL model -> ONNX for Node and the browser"),
    "generate": ("hftune.tasks.instruction:generate_command", "generate with an instruction-tuned model"),
}


def _usage() -> str:
    lines = ["usage: hftune VERB [options]", "", "verbs:"]
    lines += [f"  {verb:<12} {help_}" for verb, (_, help_) in VERBS.items()]
    lines.append("\n`hftune VERB --help` shows a verb's options.")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}. Choose one of: {', '.join(VERBS)}.", file=sys.stderr)
        return 2
    module_name, func_name = VERBS[verb][0].split(":")
    command = getattr(importlib.import_module(module_name), func_name)
    return int(command(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
