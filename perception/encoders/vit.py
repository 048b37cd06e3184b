"""Plain ViT baseline built with timm, trained from scratch (no pretrained weights are downloaded)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from typing_extensions import override

from perception.configs import ViTEncoderConfig
from perception.encoder import VisionEncoder

# ImageNet statistics, as timm's ViTs use; any fixed affine map works for a model trained from scratch.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class ViTEncoder(VisionEncoder):
    """timm ``VisionTransformer`` without class token or head: returns all patch tokens."""

    def __init__(self, cfg: ViTEncoderConfig) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.cfg = cfg
        self.vit = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            num_classes=0,
            class_token=False,
            global_pool="",
            dynamic_img_size=False,
        )
        # FiLM after every block, zero-initialised: at the start the encoder ignores the condition.
        self.film = torch.nn.ModuleList(
            torch.nn.Linear(cfg.film_dim, 2 * cfg.embed_dim) for _ in range(cfg.depth if cfg.film_dim else 0)
        )
        for lin in self.film:
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    @override
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    @override
    def num_patches(self) -> int:
        return (self.cfg.image_size // self.cfg.patch_size) ** 2

    @property
    @override
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    @override
    def cond_dim(self) -> int:
        return self.cfg.film_dim

    @override
    def get_transform(self) -> Callable[[Tensor], Tensor]:
        size = self.cfg.image_size

        def transform(images: Tensor) -> Tensor:
            if images.shape[-2:] != (size, size):
                images = torch.nn.functional.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            return (images - self.mean) / self.std

        return transform

    @override
    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(
                f"ViTEncoder expects (B, 3, {s}, {s}) preprocessed images, got {tuple(images.shape)}"
            )
        if not self.film:
            if cond is not None:
                raise ValueError("this ViTEncoder has film_dim=0 and takes no condition; set film_dim")
            return self.vit.forward_features(images)  # (B, num_patches, embed_dim)
        if cond is None or cond.shape != (images.shape[0], self.cfg.film_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(
                f"ViTEncoder with film_dim={self.cfg.film_dim} needs cond (B, film_dim), got {got}"
            )
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(images))))
        for block, film in zip(v.blocks, self.film, strict=True):
            gamma, beta = film(cond.to(x.dtype)).chunk(2, dim=-1)
            x = block(x) * (1 + gamma[:, None]) + beta[:, None]
        return v.norm(x)
