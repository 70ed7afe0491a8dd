"""Benchmarks against plain Hugging Face, TransformerLens + SAELens and nnsight: ``python -m benchmarks``."""
