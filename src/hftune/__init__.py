"""hftune: Hugging Face-native fine-tuning for modest hardware.

`import hftune` is light (no torch, no transformers), so `hftune --help` starts at once. Importing
`hftune.jsl` registers the JSL seq2seq model with the transformers Auto classes.
"""

__version__ = "0.1.0"

# Before anything imports transformers (which imports peft, which imports bitsandbytes): see runtime.
from hftune.runtime import silence_library_notices  # noqa: E402

silence_library_notices()
