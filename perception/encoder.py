"""The vision-encoder interface every encoder in ``perception/`` implements (OpenVLA's featurizer shape).

An encoder maps a batch of images of one camera, float `(B, 3, S, S)` in [0, 1], to patch features
`(B, num_patches, embed_dim)`. The policy calls it once per camera. An encoder with a nonzero
``cond_dim`` also takes a conditioning vector per image (the pooled instruction, for FiLM).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from torch import Tensor, nn


class VisionEncoder(nn.Module, ABC):
    """Base class for vision encoders."""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Width of each output token."""

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Number of output tokens per image."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square input images (pixels)."""

    @abstractmethod
    def get_transform(self) -> Callable[[Tensor], Tensor]:
        """Return the preprocessing that turns float `(B, 3, H, W)` images in [0, 1] into encoder input."""

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning vector ``forward`` takes (0: the encoder takes none)."""
        return 0

    @abstractmethod
    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        """Encode preprocessed `(B, 3, S, S)` images into `(B, num_patches, embed_dim)` features.

        ``cond`` is `(B, cond_dim)` when ``cond_dim > 0``, else None.
        """
