"""ViT baseline behind the VisionEncoder interface."""

from __future__ import annotations

import pytest
import torch

from perception import VisionEncoder, ViTEncoderConfig


def test_vit_shapes_transform_and_interface():
    torch.manual_seed(0)
    enc = ViTEncoderConfig(image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2).build()
    assert isinstance(enc, VisionEncoder)
    assert (enc.embed_dim, enc.num_patches, enc.image_size) == (48, 16, 32)
    x = enc.get_transform()(torch.rand(3, 3, 64, 64))  # resized to 32
    assert x.shape == (3, 3, 32, 32)
    out = enc(x)
    assert out.shape == (3, 16, 48)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert enc.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    # patch tokens are position-dependent: shifting the image changes which token carries what
    y = torch.zeros(1, 3, 32, 32)
    y[..., :8, :8] = 1
    f1 = enc(enc.get_transform()(y))
    f2 = enc(enc.get_transform()(y.roll(8, dims=-1)))
    assert (f1 - f2).abs().amax() > 1e-3


def test_vit_config_validation_and_input_check():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTEncoderConfig(image_size=30, patch_size=8)
    enc = ViTEncoderConfig(image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2).build()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        enc(torch.rand(1, 3, 16, 16))
