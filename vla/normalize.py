"""Action/state normalization (OpenVLA BOUNDS_Q99) and the uniform-bin action tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

_EPS = 1e-6
TARGET_STD_FLOOR = 0.01
"""Metres: a target coordinate that varies less than this over the data (a cube's resting height) is
scaled by this, not by its own near-zero spread, which would blow up float noise."""


@dataclass
class NormStats:
    """Per-dimension statistics stored with every checkpoint (``normalization.json``).

    Args:
        action_q01: 1st percentile of each action dimension.
        action_q99: 99th percentile of each action dimension.
        state_mean: mean of each state dimension.
        state_std: standard deviation of each state dimension.
        target_mean: mean of each coordinate of the auxiliary target (``target_pos``); ``None`` when the
            data has none.
        target_std: its standard deviation (floored at :data:`TARGET_STD_FLOOR`); ``None`` likewise.
    """

    action_q01: list[float]
    action_q99: list[float]
    state_mean: list[float]
    state_std: list[float]
    target_mean: list[float] | None = None
    target_std: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.action_q01) != len(self.action_q99) or len(self.state_mean) != len(self.state_std):
            raise ValueError("normalization statistics have mismatched lengths")
        if any(hi < lo for lo, hi in zip(self.action_q01, self.action_q99, strict=True)):
            raise ValueError("action_q99 must be >= action_q01 in every dimension")
        if (self.target_mean is None) != (self.target_std is None) or (
            self.target_mean is not None and len(self.target_mean) != len(self.target_std or [])
        ):
            raise ValueError(
                "target_mean and target_std must both be given, with the same length, or neither"
            )

    @classmethod
    def identity(cls, action_dim: int, state_dim: int) -> NormStats:
        """Statistics that leave [-1, 1] actions and states unchanged."""
        return cls([-1.0] * action_dim, [1.0] * action_dim, [0.0] * state_dim, [1.0] * state_dim)

    @classmethod
    def from_arrays(
        cls, actions: np.ndarray, states: np.ndarray, targets: np.ndarray | None = None
    ) -> NormStats:
        """Compute statistics from `(N, A)` actions, `(N, S)` states and optional `(N, 3)` targets."""
        actions = np.asarray(actions, dtype=np.float64)
        states = np.asarray(states, dtype=np.float64)
        if actions.ndim != 2 or states.ndim != 2 or len(actions) == 0:
            raise ValueError(
                f"expected non-empty (N, A) actions and (N, S) states, got {actions.shape}, {states.shape}"
            )
        tmean = tstd = None
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float64)
            if targets.ndim != 2 or len(targets) != len(actions):
                raise ValueError(f"expected (N={len(actions)}, 3) targets, got {targets.shape}")
            rows = targets[~np.isnan(targets).any(1)]  # NaN rows: frames without a target
            if not len(rows):
                raise ValueError("every target row is NaN: no frame has a target")
            tmean = rows.mean(0).tolist()
            tstd = np.maximum(rows.std(0), TARGET_STD_FLOOR).tolist()
        return cls(
            action_q01=np.quantile(actions, 0.01, axis=0).tolist(),
            action_q99=np.quantile(actions, 0.99, axis=0).tolist(),
            state_mean=states.mean(0).tolist(),
            state_std=np.maximum(states.std(0), 1e-3).tolist(),
            target_mean=tmean,
            target_std=tstd,
        )

    def to_dict(self) -> dict[str, list[float]]:
        """Plain dict for JSON (target statistics only when present, so older files stay as they were)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def normalize_actions(a: Tensor, q01: Tensor, q99: Tensor) -> Tensor:
    """Map raw actions to [-1, 1] over the q01..q99 range, clipping outliers."""
    return (2 * (a - q01) / (q99 - q01).clamp_min(_EPS) - 1).clamp(-1, 1)


def unnormalize_actions(x: Tensor, q01: Tensor, q99: Tensor) -> Tensor:
    """Inverse of :func:`normalize_actions` on [-1, 1]."""
    return (x.clamp(-1, 1) + 1) / 2 * (q99 - q01) + q01


def actions_to_bins(x: Tensor, num_bins: int) -> Tensor:
    """Normalized actions in [-1, 1] -> integer bins ``0..num_bins-1`` (uniform, nearest centre)."""
    return ((x.clamp(-1, 1) + 1) / 2 * (num_bins - 1)).round().long()


def bins_to_actions(bins: Tensor, num_bins: int) -> Tensor:
    """Bin indices -> bin centres in [-1, 1]."""
    return bins.float() / (num_bins - 1) * 2 - 1


def stats_tensor(values: list[float]) -> Tensor:
    """A float32 tensor from a stats list."""
    return torch.tensor(values, dtype=torch.float32)
