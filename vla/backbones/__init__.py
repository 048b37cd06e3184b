"""Backbones: the compact Llama/Qwen2-style decoder."""
