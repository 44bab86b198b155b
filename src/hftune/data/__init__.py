"""Data for the recipes: text-classification splits from any source (`classification`) and instruction prompts
(`prompts`)."""

from hftune.data.classification import (
    ClassificationData,
    load_classification_data,
    movie_polarity_csv,
    read_data_file,
    tokenize_splits,
)

__all__ = [
    "ClassificationData",
    "load_classification_data",
    "movie_polarity_csv",
    "read_data_file",
    "tokenize_splits",
]
