"""hftune: Hugging Face-native fine-tuning for modest hardware."""

__version__ = "0.1.0"
