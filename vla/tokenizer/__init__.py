"""Subgoal image tokenizers (FSQ autoencoder)."""
