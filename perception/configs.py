"""Configs for vision encoders (draccus choice registry: ``--policy.vision.type=vit``)."""

from __future__ import annotations

from dataclasses import dataclass

import draccus

from perception.encoder import VisionEncoder


@dataclass
class VisionEncoderConfig(draccus.ChoiceRegistry):
    """Base config of a vision encoder."""

    def build(self) -> VisionEncoder:
        """Instantiate the encoder."""
        raise NotImplementedError


@VisionEncoderConfig.register_subclass("vit")
@dataclass
class ViTEncoderConfig(VisionEncoderConfig):
    """Plain ViT trained from scratch (timm ``VisionTransformer``).

    Args:
        image_size: input side in pixels.
        patch_size: patch side; ``image_size`` must be a multiple.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``embed_dim``.
        film_dim: width of a conditioning vector that scales and shifts the tokens after every block
            (FiLM, as RT-1 conditions its image encoder on the instruction); 0 turns it off.
    """

    image_size: int = 64
    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    film_dim: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.film_dim < 0:
            raise ValueError(f"film_dim must be >= 0 (0 turns FiLM off), got {self.film_dim}")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )

    def build(self) -> VisionEncoder:
        """Instantiate a :class:`perception.encoders.vit.ViTEncoder`."""
        from perception.encoders.vit import ViTEncoder

        return ViTEncoder(self)
