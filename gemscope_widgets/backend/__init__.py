"""Torch/transformers side: models, SAEs, hooks, statistics, steering. Knows nothing of widgets."""
