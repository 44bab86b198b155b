"""hftune: Hugging Face-native fine-tuning for modest hardware."""

__version__ = "0.1.0"

# Before anything imports transformers (which imports peft, which imports bitsandbytes): see library_notices.
from hftune.library_notices import silence_library_notices  # noqa: E402

silence_library_notices()

# Importing hftune registers the JSL seq2seq model with the Auto classes (AutoConfig,
# AutoModelForSeq2SeqLM, AutoTokenizer), so `from_pretrained` finds it without trust_remote_code.
from hftune import jsl as jsl  # noqa: E402
