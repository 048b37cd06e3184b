"""FSQ image tokenizer for subgoal frames (finite scalar quantization, Mentzer et al. 2023).

A small convolutional autoencoder maps an `(C, S, S)` image to an `(S/f, S/f)` grid of latent
vectors; each of the ``len(levels)`` latent channels is bounded with ``tanh`` and rounded to one of
``levels[i]`` values (straight-through gradient). The code of a position is the mixed-radix index of
its rounded values, so the codebook has ``prod(levels)`` entries and cannot collapse (no learned
codebook). CoT-VLA uses 256 codes per 256-px image; with ``downsample=8`` a 64-px frame gives 64.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from vla.fileio import atomic_file, atomic_write_text

TOKENIZER_CONFIG = "config.json"
TOKENIZER_WEIGHTS = "model.safetensors"


@dataclass
class FSQConfig:
    """FSQ autoencoder settings.

    Args:
        image_size: side of the square frames it encodes (pixels).
        downsample: spatial reduction factor (a power of two); the code grid is ``image_size / downsample``.
        levels: quantization levels per latent channel; codebook size is their product.
        channels: conv widths at each resolution, one entry per halving plus the bottleneck width.
    """

    image_size: int = 64
    downsample: int = 8
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])

    def __post_init__(self) -> None:
        n = int(math.log2(self.downsample)) if self.downsample > 0 else -1
        if n < 1 or 2**n != self.downsample:
            raise ValueError(f"downsample must be a power of two >= 2, got {self.downsample}")
        if self.image_size % self.downsample != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of downsample ({self.downsample})"
            )
        if len(self.channels) != n + 1:
            raise ValueError(
                f"channels needs {n + 1} entries for downsample {self.downsample}, got {self.channels}"
            )
        if not self.levels or any(lv < 2 for lv in self.levels):
            raise ValueError(f"levels must be integers >= 2, got {self.levels}")

    @property
    def grid(self) -> int:
        """Side of the code grid."""
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        """Codes per image."""
        return self.grid**2

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes."""
        return math.prod(self.levels)


class FSQ(nn.Module):
    """Finite scalar quantizer over the last dimension (``len(levels)`` channels)."""

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.float32), 0)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        half_l = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: Tensor) -> Tensor:
        """Round bounded latents to the grid, normalised to [-1, 1], with a straight-through gradient."""
        b = self._bound(z)
        q = b + (b.round() - b).detach()
        return q / (self.levels // 2)

    def codes_from_quantized(self, q: Tensor) -> Tensor:
        """Map normalised quantized latents `(..., L)` to integer codes `(...)`."""
        half = self.levels // 2
        digits = (q * half + half).round()
        return (digits * self.basis).sum(-1).long()

    def quantized_from_codes(self, codes: Tensor) -> Tensor:
        """Inverse of :meth:`codes_from_quantized`."""
        digits = (codes[..., None] // self.basis.long()) % self.levels.long()
        half = self.levels // 2
        return (digits.float() - half) / half


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(min(8, cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))


class FSQAutoencoder(nn.Module):
    """Conv encoder -> FSQ -> conv decoder. Images are float `(B, 3, S, S)` in [0, 1]."""

    def __init__(self, cfg: FSQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
        for i in range(len(ch) - 1):
            enc += [_block(ch[i], ch[i]), nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        enc += [
            _block(ch[-1], ch[-1]),
            nn.GroupNorm(min(8, ch[-1]), ch[-1]),
            nn.SiLU(),
            nn.Conv2d(ch[-1], len(cfg.levels), 1),
        ]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(len(cfg.levels), ch[-1], 3, padding=1), _block(ch[-1], ch[-1])]
        for i in range(len(ch) - 1, 0, -1):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch[i], ch[i - 1], 3, padding=1),
                _block(ch[i - 1], ch[i - 1]),
            ]
        dec += [nn.GroupNorm(min(8, ch[0]), ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.fsq = FSQ(cfg.levels)

    def _check(self, images: Tensor) -> None:
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(
                f"tokenizer expects (B, 3, {s}, {s}) images in [0, 1], got {tuple(images.shape)}"
            )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruct images; returns ``(recon in [0,1]-ish, codes (B, N))``."""
        self._check(images)
        z = self.encoder(images * 2 - 1).permute(0, 2, 3, 1)  # (B, g, g, L)
        q = self.fsq.quantize(z)
        recon = self.decoder(q.permute(0, 3, 1, 2)) * 0.5 + 0.5
        return recon, self.fsq.codes_from_quantized(q).flatten(1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images `(B, 3, S, S)` -> codes `(B, N)` (row-major over the grid)."""
        self._check(images)
        z = self.encoder(images * 2 - 1).permute(0, 2, 3, 1)
        return self.fsq.codes_from_quantized(self.fsq.quantize(z)).flatten(1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes `(B, N)` -> images `(B, 3, S, S)` clamped to [0, 1]."""
        g = self.cfg.grid
        if codes.dim() != 2 or codes.shape[1] != g * g:
            raise ValueError(f"expected codes of shape (B, {g * g}), got {tuple(codes.shape)}")
        q = self.fsq.quantized_from_codes(codes.view(-1, g, g))  # (B, g, g, L)
        return (self.decoder(q.permute(0, 3, 1, 2)) * 0.5 + 0.5).clamp(0, 1)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``path`` (atomically per file)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_file(path / TOKENIZER_WEIGHTS) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_text(path / TOKENIZER_CONFIG, json.dumps(asdict(self.cfg), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> FSQAutoencoder:
        """Load a tokenizer written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / TOKENIZER_CONFIG).is_file():
            raise FileNotFoundError(
                f"{path} holds no tokenizer ({TOKENIZER_CONFIG} missing); train one with "
                "vla-train-tokenizer or pass the right folder"
            )
        model = cls(FSQConfig(**json.loads((path / TOKENIZER_CONFIG).read_text())))
        model.load_state_dict(load_file(str(path / TOKENIZER_WEIGHTS)))
        return model.to(device).eval()


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB between images in [0, 1]."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
