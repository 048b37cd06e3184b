"""Command-line entry points (vla-train, vla-train-tokenizer)."""
