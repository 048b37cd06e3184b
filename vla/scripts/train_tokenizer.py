"""Train the FSQ subgoal-image tokenizer on demo frames (console script ``vla-train-tokenizer``).

Examples::

    vla-train-tokenizer --dataset.root=data/embedded_goal --output_dir=outputs/tokenizer
    vla-train-tokenizer --config_path=configs/train/tokenizer_tiny.yaml --steps=300

Writes ``<output_dir>/tokenizer/`` (``config.json`` + ``model.safetensors``), ``metrics.jsonl`` and
``report.json`` with the reconstruction PSNR on held-out frames (the last episode(s) of the dataset).
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla.constants import OBS_AGENTVIEW
from vla.data import DatasetConfig, load_frames, make_dataset
from vla.fileio import atomic_write_text
from vla.tokenizer.fsq import FSQAutoencoder, FSQConfig, psnr
from vla.training import MetricsLogger, resolve_device, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class TokenizerTrainConfig:
    """Settings of a tokenizer run.

    Args:
        dataset: demonstrations to take agentview frames from.
        tokenizer: autoencoder shape.
        output_dir: run folder.
        steps: optimizer steps.
        batch_size: frames per step.
        lr: Adam learning rate (cosine-decayed to 10%).
        max_frames: at most this many training frames are kept in memory (evenly spaced).
        holdout_episodes: last episodes kept out for the PSNR report.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: random seed.
    """

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tokenizer: FSQConfig = field(default_factory=FSQConfig)
    output_dir: str = "outputs/tokenizer"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    max_frames: int = 20000
    holdout_episodes: int = 1
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.holdout_episodes < 0:
            raise ValueError("holdout_episodes must be >= 0")


def _load_frames(cfg: TokenizerTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode agentview frames into uint8 tensors `(N, 3, S, S)`: (train, held-out)."""
    ds = make_dataset(cfg.dataset)
    if cfg.dataset.windows is not None:  # vla.windows.Windows: frames already decoded
        from vla.windows import resize_uint8

        frames = resize_uint8(ds.frames[OBS_AGENTVIEW], cfg.tokenizer.image_size)
        ep = ds.episode_index
    else:
        frames = load_frames(ds, OBS_AGENTVIEW, cfg.tokenizer.image_size)
        ep = torch.as_tensor(np.asarray(ds.hf_dataset.with_format("numpy")["episode_index"]))
    episodes = sorted(set(ep.tolist()))
    hold = set(episodes[-cfg.holdout_episodes :]) if cfg.holdout_episodes and len(episodes) > 1 else set()
    is_hold = torch.tensor([int(e) in hold for e in ep.tolist()], dtype=torch.bool)
    train, held = frames[~is_hold], frames[is_hold]
    if len(train) > cfg.max_frames:
        train = train[torch.linspace(0, len(train) - 1, cfg.max_frames).long()]
    if len(held) > 512:
        held = held[torch.linspace(0, len(held) - 1, 512).long()]
    return train, held


def train_tokenizer(cfg: TokenizerTrainConfig) -> dict[str, float]:
    """Train, save and report; returns ``{"psnr_heldout", "psnr_train", "train_minutes"}``."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tokenizer_config.yaml", "w") as f:
        draccus.dump(cfg, f)
    t0 = time.time()
    train, hold = _load_frames(cfg)
    if len(train) == 0:
        raise ValueError("no training frames: the dataset is empty or every episode is held out")
    logger.info("tokenizer: %d train frames, %d held-out frames", len(train), len(hold))
    model = FSQAutoencoder(cfg.tokenizer).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.1)
    metrics = MetricsLogger(out, tensorboard=False)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="tokenizer")
    for step in bar:
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=g)
        x = train[idx].to(device).float() / 255
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            recon, _ = model(x)
        loss = F.mse_loss(recon.float(), x) + 0.1 * F.l1_loss(recon.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            p = psnr(recon.detach().float(), x)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{p:.1f}")
            metrics.log(step, {"loss": loss.item(), "psnr_batch": p})
    model.eval()
    report = {
        "psnr_train": _eval_psnr(model, train[:512], device),
        "psnr_heldout": _eval_psnr(model, hold, device) if len(hold) else float("nan"),
        "train_minutes": (time.time() - t0) / 60,
        "steps": cfg.steps,
        "train_frames": len(train),
        "heldout_frames": len(hold),
        "tokens_per_image": cfg.tokenizer.num_tokens,
        "codebook_size": cfg.tokenizer.codebook_size,
        "config": asdict(cfg.tokenizer),
    }
    model.cpu().save_pretrained(out / "tokenizer")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    metrics.close()
    logger.info("tokenizer saved to %s: PSNR held-out %.2f dB", out / "tokenizer", report["psnr_heldout"])
    return report


@torch.no_grad()
def _eval_psnr(model: FSQAutoencoder, frames: torch.Tensor, device: torch.device) -> float:
    if len(frames) == 0:
        return float("nan")
    x = frames.to(device).float() / 255
    recon = torch.cat([model.decode(model.encode(x[i : i + 128])) for i in range(0, len(x), 128)])
    return psnr(recon.float(), x)


@draccus.wrap()
def train(cfg: TokenizerTrainConfig) -> None:
    """CLI entry: train the tokenizer described by ``cfg``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train_tokenizer(cfg)


def main() -> None:
    """Console-script entry point."""
    train()


if __name__ == "__main__":
    main()
