"""The vision-encoder interface every encoder in ``perception/`` implements (OpenVLA's featurizer shape).

An encoder maps a batch of images of one camera, float `(B, 3, S, S)` in [0, 1], to patch features
`(B, num_patches, embed_dim)`. The policy calls it once per camera.
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

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Encode preprocessed `(B, 3, S, S)` images into `(B, num_patches, embed_dim)` features."""
