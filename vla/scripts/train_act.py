"""Train lerobot's ACT on our demonstrations (console script ``vla-train-act``): the peer of issue #3.

Same data as ``vla-train`` (a windows folder from ``vla-export-windows``, or a LeRobotDataset), lerobot's
own ``ACTPolicy`` and loss, our loop: AdamW, bf16 autocast on CUDA, gradient clipping, tqdm, metrics JSONL,
atomic checkpoints. The ResNet18 backbone starts from scratch (no downloads), so both learning rates are
1e-4: lerobot's ACT defaults (1e-5 for both) assume an ImageNet backbone and barely move a random one.

Examples::

    # GPU machine: the same windows folder and budget (steps x batch) as the CoT-VLA run
    vla-train-act --config_path=configs/train/act_embedded_goal.yaml --windows=data/windows/embedded_goal
    # (there without an install: python3 -m vla.scripts.train_act ...)
    # CPU smoke run on the demo's LeRobotDataset
    vla-train-act --config_path=configs/train/act_embedded_goal.yaml --dataset.root=outputs/demo/demos \
        --dataset.repo_id=local/demo_embedded_goal --steps=20 --batch_size=8 --output_dir=/tmp/act \
        --device=cpu
    # evaluate the result (sim.policies loads folders holding peer.json through vla.peers.load_peer)
    vla-sim-eval --config_path=configs/sim/eval_embedded_goal_checkpoint.yaml --policy=<output_dir>/checkpoint

Run folder: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/<step>/`` every ``save_every`` steps,
``checkpoint/`` after the last step (what ``load_peer`` and ``run_eval --policy`` take) and
``train_summary.json`` (copied to ``bench_train.json``, the record ``bench.policy_embedded report`` reads).
"""

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import torch
from tqdm import tqdm

from vla.data import DatasetConfig
from vla.peers.lerobot_act import ActPolicyConfig, ActSamples, build_policy, peer_record, save_checkpoint
from vla.training import MetricsLogger, resolve_device, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class ActOptimConfig:
    """AdamW over lerobot's two parameter groups (backbone, rest), linear warm-up then constant.

    Args:
        lr: learning rate of everything but the backbone.
        lr_backbone: learning rate of the ResNet backbone (from scratch here, so as high as ``lr``).
        weight_decay: AdamW weight decay (lerobot ACT default).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps (lerobot ACT uses none).
        grad_clip: max global gradient norm (lerobot's default 10; 0 disables clipping).
    """

    lr: float = 1e-4
    lr_backbone: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.lr_backbone <= 0:
            raise ValueError(
                f"optim.lr and optim.lr_backbone must be positive, got {self.lr}, {self.lr_backbone}"
            )
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.warmup_steps and optim.grad_clip must be >= 0")


@dataclass
class ActTrainConfig:
    """A ``vla-train-act`` run.

    Args:
        windows: a ``vla-export-windows`` folder (what the GPU machine gets); same as ``dataset.windows``.
        dataset: a LeRobotDataset (``--dataset.root``, ``--dataset.repo_id``) when no windows folder is given.
        policy: the ACT model.
        optim: optimizer.
        steps: optimizer steps.
        batch_size: samples per step.
        output_dir: run folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        data_on_device: keep frames and labels on ``device`` (batches are gathers there, no DataLoader).
        log_every: steps between metric lines.
        save_every: steps between intermediate checkpoints (the last step always lands in ``checkpoint/``).
        overwrite: replace a finished run in ``output_dir``.
        seed: random seed.
    """

    windows: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy: ActPolicyConfig = field(default_factory=ActPolicyConfig)
    optim: ActOptimConfig = field(default_factory=ActOptimConfig)
    steps: int = 5000
    batch_size: int = 64
    output_dir: str = "outputs/train/lerobot_act"
    device: str = "auto"
    data_on_device: bool = True
    log_every: int = 50
    save_every: int = 1000
    overwrite: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1 or self.save_every < 1:
            raise ValueError("steps, batch_size, log_every and save_every must be >= 1")
        if self.windows and self.dataset.windows and Path(self.windows) != Path(self.dataset.windows):
            raise ValueError(
                f"--windows={self.windows} and --dataset.windows={self.dataset.windows} disagree"
            )
        if self.dataset.episodes is not None:
            raise ValueError("dataset.episodes is not supported by vla-train-act; export the subset instead")


def load_demos(cfg: ActTrainConfig) -> Any:
    """The demonstrations as :class:`vla.windows.Windows` (a windows folder, else the LeRobotDataset)."""
    folder = cfg.windows or cfg.dataset.windows
    if folder:
        from vla.windows import load_windows

        return load_windows(folder)
    if cfg.dataset.root is None:
        raise ValueError(
            "give the demonstrations: --windows=<vla-export-windows folder> or --dataset.root=<dir>"
        )
    from vla.windows import read_lerobot

    return read_lerobot(
        cfg.dataset.repo_id,
        cfg.dataset.root,
        list(cfg.policy.camera_keys),
        size=cfg.policy.image_size or None,
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def run(cfg: ActTrainConfig) -> dict[str, Any]:
    """Train, checkpoint, and return the summary (also written to ``train_summary.json``)."""
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    if (out / "checkpoint").exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds a finished run; pass --overwrite=true or a new --output_dir"
        )
    if cfg.overwrite:
        for name in ("metrics.jsonl", "checkpoints"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.yaml", "w") as f:
        draccus.dump(cfg, f)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    demos = load_demos(cfg)
    samples = ActSamples(demos, cfg.policy, device if cfg.data_on_device else "cpu")
    del demos
    stats = samples.norm_stats()
    stats_t = stats.tensors(samples.device)
    logger.info(
        "%d frames, %d episodes, %d tasks, images %dx%d, state %d, action %d (fps %d)",
        len(samples), samples.num_episodes, len(samples.tasks), samples.image_size, samples.image_size,
        samples.state_dim, samples.action_dim, samples.fps,
    )  # fmt: skip
    policy = build_policy(cfg.policy, samples, device)
    policy.config.optimizer_lr = cfg.optim.lr
    policy.config.optimizer_lr_backbone = cfg.optim.lr_backbone
    policy.config.optimizer_weight_decay = cfg.optim.weight_decay
    policy.train()
    n_params = sum(p.numel() for p in policy.parameters())
    logger.info("lerobot ACTPolicy: %.1fM parameters on %s", n_params / 1e6, device)
    # lerobot's groups: everything but the backbone, then the backbone with its own lr.
    opt = torch.optim.AdamW(
        policy.get_optim_params(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas
    )
    warm = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    record = peer_record(cfg.policy, samples, source=samples.source, seed=cfg.seed)
    metrics = MetricsLogger(out, tensorboard=False)
    gen = torch.Generator(device=samples.device).manual_seed(cfg.seed)
    n, bs = len(samples), min(cfg.batch_size, len(samples))
    order, pos = torch.randperm(n, generator=gen, device=samples.device), 0
    use_amp = device.type == "cuda"
    sums: dict[str, float] = {}
    count, logs, t_loop, t_log = 0, {}, time.perf_counter(), time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train act")
    for step in bar:
        if pos + bs > n:  # a new epoch: every frame once per epoch, in a fresh order
            order, pos = torch.randperm(n, generator=gen, device=samples.device), 0
        batch = samples.batch(order[pos : pos + bs], stats_t)
        pos += bs
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = policy(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip or float("inf"))
        opt.step()
        sched.step()
        logs = {"loss": float(loss.detach()), **logs}
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            avg = {k: v / count for k, v in sums.items()}
            avg.update(
                lr=sched.get_last_lr()[0],
                grad_norm=float(gnorm),
                samples_per_s=count * bs / (now - t_log),
                minutes=(now - t_loop) / 60,
            )
            metrics.log(done, avg)
            bar.set_postfix(loss=f"{avg['loss']:.3f}", l1=f"{avg['l1_loss']:.3f}")
            sums, count, t_log = {}, 0, now
        if done % cfg.save_every == 0 and done < cfg.steps:
            save_checkpoint(
                out / "checkpoints" / f"{done:06d}", policy, stats, {**record, "trained_steps": done}
            )
    loop_minutes = (time.perf_counter() - t_loop) / 60
    save_checkpoint(out / "checkpoint", policy, stats, {**record, "trained_steps": cfg.steps})
    metrics.close()
    summary = {
        "variant": "lerobot_act",
        "minutes": round((time.perf_counter() - t_start) / 60, 2),
        "loop_minutes": round(loop_minutes, 2),
        "device": _device_name(device),
        "steps": cfg.steps,
        "batch_size": bs,
        "parameters": n_params,
        "data": cfg.windows or cfg.dataset.windows or cfg.dataset.root,
        "frames": len(samples),
        "episodes": samples.num_episodes,
        "checkpoint": str(out / "checkpoint"),
        "final": logs,
    }
    text = json.dumps(summary, indent=2)
    (out / "train_summary.json").write_text(text)
    (out / "bench_train.json").write_text(text)
    return summary


@draccus.wrap()
def train(cfg: ActTrainConfig) -> None:
    """CLI entry: train lerobot's ACT as ``cfg`` says."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(cfg)


def main() -> None:
    """Console-script entry point."""
    train()


if __name__ == "__main__":
    main()
