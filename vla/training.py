"""Shared training pieces: optimizer settings, warm-up + cosine schedule, metrics sinks, resumable state.

Training state (optimizer moments, scheduler, step, RNG) is written with safetensors + JSON, never pickle.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings-like vectors).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        steps: total optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: max global gradient norm (0 disables clipping).
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200
    steps: int = 5000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"optim.steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"optim.warmup_steps ({self.warmup_steps}) must be in [0, steps={self.steps}]")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decay on matrices only) and its LambdaLR schedule."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    return opt, sched


class MetricsLogger:
    """Append metrics to ``metrics.jsonl`` and, if available, TensorBoard (rank 0 only)."""

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one line of metrics."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


def save_training_state(path: Path, step: int, opt: torch.optim.Optimizer, sched: Any) -> None:
    """Write optimizer moments (safetensors) and step/schedule/RNG (JSON) into ``path``."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val) and val.dim() > 0:
                tensors[f"{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = float(val)
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path / "optimizer.safetensors")
    meta = {
        "step": step,
        "param_groups": sd["param_groups"],
        "scalars": scalars,
        "scheduler": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
        "torch_rng": torch.get_rng_state().tolist(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "python_rng": random.getstate()[1][:625],
    }
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path / "training_state.json")


def load_training_state(path: Path, opt: torch.optim.Optimizer, sched: Any) -> int:
    """Restore what :func:`save_training_state` wrote; returns the step to continue from."""
    from safetensors.torch import load_file

    meta = json.loads((path / "training_state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, sc in meta["scalars"].items():
        for name, val in sc.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(val)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**sched.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    np.random.set_state(("MT19937", np.array(meta["numpy_rng"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, (*meta["python_rng"][:624], 624), None))
    return int(meta["step"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device=cpu or auto")
    return torch.device(device)


def infinite(loader: Any) -> Any:
    """Cycle a DataLoader forever (re-shuffling each epoch, setting a DistributedSampler's epoch)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def random_shift(images: list[Tensor], pad: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """DrQ-style augmentation: replicate-pad by ``pad`` pixels, then crop back at a random offset per sample.

    Every tensor in ``images`` is ``(B, C, H, W)`` with the same ``B``; sample ``b`` of each gets the
    same offset, so a frame and its subgoal frame (or two views) stay aligned. ``pad=0`` returns the
    inputs. (Yarats et al. 2021, "Image Augmentation Is All You Need"; Diffusion Policy crops too.)
    """
    if pad <= 0 or not images:
        return images
    b = images[0].shape[0]
    dev = images[0].device
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(dev)
    out = []
    for x in images:
        if x.shape[0] != b:
            raise ValueError(f"random_shift: every tensor needs batch {b}, got {tuple(x.shape)}")
        c, h, w = x.shape[1:]
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        rows = off[:, 0, None] + torch.arange(h, device=dev)  # (B, H) source rows
        cols = off[:, 1, None] + torch.arange(w, device=dev)  # (B, W) source columns
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[-1]))
        out.append(x.gather(3, cols[:, None, None, :].expand(b, c, h, w)))
    return out


COLOUR_CHANNELS = {"red": 0, "green": 1, "blue": 2}
_CHANNEL_NAMES = {v: k for k, v in COLOUR_CHANNELS.items()}
_COLOUR_WORD = re.compile(r"\b(red|green|blue)\b")
_PERMUTATIONS = [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)]


def colour_swap(
    images: list[Tensor], tasks: list[str], share: float, generator: torch.Generator | None = None
) -> tuple[list[Tensor], list[str]]:
    """Counterfactual colour augmentation: permute RGB channels and rename the colour words to match.

    On ``share`` of the samples (drawn per sample), one random non-identity permutation of the
    channels is applied to every image of that sample (cameras and subgoal frame alike), and each
    "red" / "green" / "blue" in its instruction is renamed to the channel where that colour now
    shows. A cube that was red and named "red" turns green and is named "green": the scene, the
    actions and the target object stay the same, only the colour word and the pixels that carry it
    change together. A policy can then no longer pick a task's object from where it usually is; it has
    to match the word to the colour (embedded_goal's cubes are near-primary: sim/envs/embedded_goal.py).

    Args:
        images: `(B, 3, H, W)` tensors with the same ``B``.
        tasks: ``B`` instructions.
        share: share of samples to swap, in [0, 1].
        generator: optional CPU generator for the draws.

    Returns:
        The images (new tensors where any sample was swapped) and the instructions.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"colour_swap share must be in [0, 1], got {share}")
    b = len(tasks)
    if share == 0.0 or b == 0:
        return images, tasks
    for x in images:
        if x.shape[0] != b or x.shape[1] != 3:
            raise ValueError(f"colour_swap: every image needs shape ({b}, 3, H, W), got {tuple(x.shape)}")
    pick = torch.rand(b, generator=generator) < share
    which = torch.randint(0, len(_PERMUTATIONS), (b,), generator=generator)
    perm = torch.tensor(
        [_PERMUTATIONS[w] if p else (0, 1, 2) for p, w in zip(pick.tolist(), which.tolist(), strict=True)]
    )
    out = []
    for x in images:
        idx = perm.to(x.device)[:, :, None, None].expand_as(x)
        out.append(x.gather(1, idx))  # new channel c holds old channel perm[c]
    return out, [rename_colours(t, p) for t, p in zip(tasks, perm.tolist(), strict=True)]


def rename_colours(text: str, perm: tuple[int, ...] | list[int]) -> str:
    """The instruction for images whose new channel ``c`` holds old channel ``perm[c]`` (`colour_swap`)."""
    where = {old: new for new, old in enumerate(perm)}  # old channel -> the channel it moved to
    return _COLOUR_WORD.sub(lambda m: _CHANNEL_NAMES[where[COLOUR_CHANNELS[m.group(1)]]], text)


def colour_variants(text: str) -> list[str]:
    """Every instruction `colour_swap` can turn ``text`` into, ``text`` first (for text caches)."""
    out = [text]
    for p in _PERMUTATIONS:
        t = rename_colours(text, p)
        if t not in out:
            out.append(t)
    return out
