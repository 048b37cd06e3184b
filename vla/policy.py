"""``Policy``: the base of every trainable policy (network maths + checkpoint I/O + action queue)."""

from __future__ import annotations

import collections
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import draccus
import torch
from torch import Tensor, nn

from vla.fileio import atomic_dir

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "normalization.json"
METADATA_FILE = "metadata.json"
TOKENIZER_DIR = "tokenizer"


class Policy(nn.Module, ABC):
    """Base policy: ``forward`` gives the training loss, ``predict_action_chunk`` the actions.

    Subclasses keep their config in ``self.config`` (a registered ``PolicyConfig``).
    """

    config: Any

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[Tensor] = collections.deque()

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Return the training loss and log items for a batch."""

    @abstractmethod
    def predict_action_chunk(self, batch: dict[str, Any]) -> Tensor:
        """Return raw (un-normalized) actions `(B, h, A)`."""

    def reset(self) -> None:
        """Clear the action queue at the start of an episode."""
        self._queue.clear()

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """Return one action `(B, A)`, replanning every ``config.n_action_steps`` calls."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    # ---- checkpoint I/O (no pickle: YAML config, safetensors weights, JSON statistics) ----

    def config_to_save(self) -> Any:
        """The config written to ``config.yaml`` (subclasses drop paths that only matter at build time)."""
        return self.config

    def extra_files(self, path: Path) -> None:
        """Hook for subclasses to write extra checkpoint files (called inside the temp folder)."""

    def state_dict_to_save(self) -> dict[str, Tensor]:
        """Tensors that go into ``model.safetensors``."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint folder atomically (temp folder beside it, then rename).

        Args:
            path: destination folder; an existing one is replaced.
            metadata: inference contract to store in ``metadata.json``.
        """
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            with open(tmp / CONFIG_FILE, "w") as f:
                draccus.dump(self.config_to_save(), f)
            save_file(self.state_dict_to_save(), str(tmp / WEIGHTS_FILE))
            os.chmod(tmp / WEIGHTS_FILE, 0o644)
            if metadata is not None:
                (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            self.extra_files(tmp)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Policy:
        """Load a checkpoint folder written by :meth:`save_pretrained` (any registered policy type)."""
        from vla.configs import PolicyConfig

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a policy checkpoint ({CONFIG_FILE} missing)")
        cfg = draccus.parse(PolicyConfig, config_path=str(path / CONFIG_FILE), args=[])
        policy = cfg.build()
        policy.load_checkpoint_files(path)
        return policy.to(device).eval()

    def load_checkpoint_files(self, path: Path) -> None:
        """Load weights (and subclass files) from a checkpoint folder."""
        from safetensors.torch import load_file

        missing, unexpected = self.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
        if unexpected or [m for m in missing if not self.optional_key(m)]:
            raise ValueError(
                f"checkpoint {path} does not match the model: missing={missing[:5]} "
                f"unexpected={unexpected[:5]}"
            )

    def optional_key(self, key: str) -> bool:
        """Whether a state-dict key may be absent from ``model.safetensors`` (stored elsewhere)."""
        return False
