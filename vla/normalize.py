"""Action/state normalization (OpenVLA BOUNDS_Q99) and the uniform-bin action tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

_EPS = 1e-6


@dataclass
class NormStats:
    """Per-dimension statistics stored with every checkpoint (``normalization.json``).

    Args:
        action_q01: 1st percentile of each action dimension.
        action_q99: 99th percentile of each action dimension.
        state_mean: mean of each state dimension.
        state_std: standard deviation of each state dimension.
    """

    action_q01: list[float]
    action_q99: list[float]
    state_mean: list[float]
    state_std: list[float]

    def __post_init__(self) -> None:
        if len(self.action_q01) != len(self.action_q99) or len(self.state_mean) != len(self.state_std):
            raise ValueError("normalization statistics have mismatched lengths")
        if any(hi < lo for lo, hi in zip(self.action_q01, self.action_q99, strict=True)):
            raise ValueError("action_q99 must be >= action_q01 in every dimension")

    @classmethod
    def identity(cls, action_dim: int, state_dim: int) -> NormStats:
        """Statistics that leave [-1, 1] actions and states unchanged."""
        return cls([-1.0] * action_dim, [1.0] * action_dim, [0.0] * state_dim, [1.0] * state_dim)

    @classmethod
    def from_arrays(cls, actions: np.ndarray, states: np.ndarray) -> NormStats:
        """Compute statistics from `(N, A)` actions and `(N, S)` states."""
        actions = np.asarray(actions, dtype=np.float64)
        states = np.asarray(states, dtype=np.float64)
        if actions.ndim != 2 or states.ndim != 2 or len(actions) == 0:
            raise ValueError(
                f"expected non-empty (N, A) actions and (N, S) states, got {actions.shape}, {states.shape}"
            )
        return cls(
            action_q01=np.quantile(actions, 0.01, axis=0).tolist(),
            action_q99=np.quantile(actions, 0.99, axis=0).tolist(),
            state_mean=states.mean(0).tolist(),
            state_std=np.maximum(states.std(0), 1e-3).tolist(),
        )

    def to_dict(self) -> dict[str, list[float]]:
        """Plain dict for JSON."""
        return asdict(self)


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
