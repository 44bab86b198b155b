"""What a recipe runs: text classification, feature extraction and instruction tuning (the JSL task is\n`hftune.jsl`). Each goes through `hftune.training.lifecycle`."""
