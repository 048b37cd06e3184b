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


def test_film_starts_as_identity_then_conditions_the_tokens():
    torch.manual_seed(0)
    kw = dict(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)
    plain = ViTEncoderConfig(**kw).build()
    film = ViTEncoderConfig(**kw, film_dim=5).build()
    assert (plain.cond_dim, film.cond_dim) == (0, 5)
    film.vit.load_state_dict(plain.vit.state_dict())
    x = plain.get_transform()(torch.rand(3, 3, 32, 32))
    c1, c2 = torch.randn(3, 5), torch.randn(3, 5)
    ref = plain(x)
    # zero-initialised FiLM: the same tokens as the plain encoder, whatever the condition
    torch.testing.assert_close(film(x, c1), ref)
    torch.testing.assert_close(film(x, c2), ref)
    for lin in film.film:
        torch.nn.init.normal_(lin.weight, std=0.1)
    a, b = film(x, c1), film(x, c2)
    assert (a - b).abs().amax() > 1e-3  # the condition now changes the tokens
    torch.testing.assert_close(film(x[:1], c1[:1]), a[:1])  # per-image: no mixing across the batch
    a.sum().backward()
    assert all(lin.weight.grad.abs().sum() > 0 for lin in film.film)


def test_film_condition_errors():
    kw = dict(image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="film_dim must be >= 0"):
        ViTEncoderConfig(**kw, film_dim=-1)
    plain, film = ViTEncoderConfig(**kw).build(), ViTEncoderConfig(**kw, film_dim=4).build()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="takes no condition"):
        plain(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"needs cond \(B, film_dim\)"):
        film(x)
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        film(x, torch.zeros(2, 3))
