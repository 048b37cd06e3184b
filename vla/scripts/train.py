"""Train a VLA policy on a LeRobotDataset (console script ``vla-train``).

Examples::

    # CPU smoke run on a local demo folder (vla-collect's --root)
    vla-train --config_path=configs/train/cot_vla_tiny.yaml --dataset.root=data/embedded_goal
    # GPU run; the tokenizer is trained first when no --policy.tokenizer_path is given
    vla-train --config_path=configs/train/cot_vla_embedded_goal.yaml --dataset.root=data/embedded_goal
    # the ablation, same data and budget
    vla-train --config_path=configs/train/cot_vla_embedded_goal.yaml --policy.use_cot=false
    # several GPUs through Ray Train's TorchTrainer
    vla-train --config_path=... --distributed.num_workers=4
    # resume the run in output_dir from its last checkpoint
    vla-train --config_path=... --resume=true

Run folder: ``config.yaml`` (resolved), ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/<step>/{pretrained_model/, training_state/}`` and ``checkpoints/last`` (a symlink).
``checkpoints/last/pretrained_model`` is what ``vla.load_policy`` and ``run_eval --policy`` take.
"""

import contextlib
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import torch
from tqdm import tqdm

from vla.configs import CotVlaConfig, PolicyConfig
from vla.constants import SUBGOAL_IMAGE, TASK
from vla.data import DatasetConfig, PreloadedWindows, compute_norm_stats, make_dataset, to_policy_batch
from vla.inference import policy_metadata
from vla.training import (
    MetricsLogger,
    OptimConfig,
    colour_swap,
    infinite,
    load_training_state,
    make_optimizer,
    random_shift,
    resolve_device,
    save_training_state,
    seed_everything,
)

logger = logging.getLogger(__name__)


@dataclass
class DistributedConfig:
    """Multi-worker training through Ray Train.

    Args:
        num_workers: training processes; more than 1 runs Ray Train's ``TorchTrainer`` (DDP).
        use_gpu: one GPU per worker (``False`` runs the workers on CPU, e.g. for tests).
    """

    num_workers: int = 1
    use_gpu: bool = True

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"distributed.num_workers must be >= 1, got {self.num_workers}")


@dataclass
class TrainConfig:
    """A training run.

    Args:
        dataset: the demonstrations.
        policy: policy config (``--policy.type=cot_vla``).
        optim: optimizer and schedule.
        distributed: Ray Train settings.
        output_dir: run folder.
        batch_size: samples per step per worker.
        num_workers: DataLoader workers per training process.
        log_every: steps between metric lines.
        save_every: steps between checkpoints (the last step is always saved).
        tensorboard: also write TensorBoard events.
        resume: continue from ``output_dir/checkpoints/last``.
        tokenizer_steps: with CoT and no ``policy.tokenizer_path``, train the tokenizer first for this many
            steps (0 keeps a random tokenizer; only sensible for smoke tests).
        tokenizer_batch_size: tokenizer batch size for that pre-step.
        tokenizer_max_frames: frames kept in memory for that pre-step.
        image_shift: random-shift augmentation in pixels (DrQ: replicate-pad, random crop back; the same
            shift for a sample's cameras and its subgoal frame); 0 = off.
        colour_swap: share of samples whose frames get a random RGB channel permutation, with the
            instruction's colour words renamed to match (`vla.training.colour_swap`): counterfactual
            data that makes the colour word, not the usual place of an object, tell the task apart.
            0 = off. The renamed instructions must be known to the text encoder (on a machine without
            MiniLM, in ``VLA_TEXT_CACHE``).
        data_on_device: with a preloaded dataset (``dataset.preload`` or ``dataset.windows``) in a
            single-process run, keep frames, actions and states on the training device and gather each
            batch there (`vla.data.PreloadedWindows.batches`) instead of a DataLoader. On a GPU this removes
            the host-side collation that otherwise bounds the step rate of small models.
        max_minutes: stop once the training loop has run this long, saving a checkpoint first; the
            schedule still spans ``optim.steps``, so ``--resume=true`` carries on where it stopped (for
            jobs with a wall-time limit: SLURM, a lent GPU's per-call limit). Single-process runs only.
        compile: ``torch.compile`` the policy's vision encoder and backbone in place for training
            (single-process runs; text lookup, embedding and losses stay eager). Checkpoints are unchanged.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: random seed.
    """

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy: PolicyConfig = field(default_factory=CotVlaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output_dir: str = "outputs/train/cot_vla"
    batch_size: int = 32
    num_workers: int = 2
    log_every: int = 50
    save_every: int = 1000
    tensorboard: bool = True
    resume: bool = False
    tokenizer_steps: int = 2000
    tokenizer_batch_size: int = 64
    tokenizer_max_frames: int = 20000
    image_shift: int = 0
    colour_swap: float = 0.0
    data_on_device: bool = True
    max_minutes: float | None = None
    compile: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.log_every < 1 or self.save_every < 1:
            raise ValueError("batch_size, log_every and save_every must be >= 1")
        if self.image_shift < 0:
            raise ValueError(f"image_shift is a pixel count and must be >= 0, got {self.image_shift}")
        if not 0.0 <= self.colour_swap <= 1.0:
            raise ValueError(
                f"colour_swap is a share of samples and must be in [0, 1], got {self.colour_swap}"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive (or unset), got {self.max_minutes}")
        if self.max_minutes is not None and self.distributed.num_workers > 1:
            raise ValueError("max_minutes works in single-process runs only; unset it or use num_workers=1")


def _prepare_tokenizer(cfg: TrainConfig) -> TrainConfig:
    """Train (or adopt) the subgoal tokenizer; returns a config whose policy points at it."""
    pol = cfg.policy
    if not getattr(pol, "use_cot", False):
        return cfg
    tok_dir = Path(cfg.output_dir) / "tokenizer" / "tokenizer"
    path = pol.tokenizer_path
    if path is None and tok_dir.is_dir() and cfg.resume:
        path = str(tok_dir)
    if path is None and cfg.tokenizer_steps > 0:
        from vla.scripts.train_tokenizer import TokenizerTrainConfig, train_tokenizer

        report = train_tokenizer(
            TokenizerTrainConfig(
                dataset=cfg.dataset,
                tokenizer=pol.tokenizer,
                output_dir=str(tok_dir.parent),
                steps=cfg.tokenizer_steps,
                batch_size=cfg.tokenizer_batch_size,
                max_frames=cfg.tokenizer_max_frames,
                device=cfg.device,
                seed=cfg.seed,
            )
        )
        logger.info("tokenizer PSNR (held-out): %.2f dB", report["psnr_heldout"])
        path = str(tok_dir)
    if path is None:
        logger.warning("CoT policy with a random subgoal tokenizer (tokenizer_steps=0, no tokenizer_path)")
        return cfg
    from vla.tokenizer.fsq import TOKENIZER_CONFIG, FSQConfig

    tok_cfg = FSQConfig(**json.loads((Path(path) / TOKENIZER_CONFIG).read_text()))
    return dataclasses.replace(
        cfg, policy=dataclasses.replace(pol, tokenizer=tok_cfg, tokenizer_path=str(path))
    )


def _check_aux_target(cfg: TrainConfig, dataset: Any = None) -> None:
    """With ``policy.aux_target_weight > 0`` the data must carry ``target_pos``; fail early and say how."""
    if getattr(cfg.policy, "aux_target_weight", 0.0) <= 0:
        return
    how = (
        f"policy.aux_target_weight={cfg.policy.aux_target_weight} needs a windows folder with target_pos: "
        "export one (`vla-export-windows`), add the target (`python -m sim.targets --windows=<folder>`) "
        "and pass --dataset.windows=<folder>; or set --policy.aux_target_weight=0"
    )
    if cfg.dataset.windows is None:
        raise ValueError(f"{how} (this run reads a LeRobotDataset, which has no target_pos)")
    if dataset is not None:
        has = getattr(dataset, "target_pos", None) is not None
    else:
        from vla.constants import TARGET_POS
        from vla.windows import read_arrays

        has = TARGET_POS in read_arrays(cfg.dataset.windows)[0]
    if not has:
        raise ValueError(f"{how} ({cfg.dataset.windows} has none)")


def _last_checkpoint(out: Path) -> Path | None:
    last = out / "checkpoints" / "last"
    return last.resolve() if last.exists() else None


def _save(out: Path, step: int, policy: Any, opt: Any, sched: Any) -> Path:
    ck = out / "checkpoints" / f"{step:06d}"
    policy.save_pretrained(ck / "pretrained_model", metadata=policy_metadata(policy))
    save_training_state(ck / "training_state", step, opt, sched)
    tmp_link = out / "checkpoints" / ".last.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(ck.name)
    os.replace(tmp_link, out / "checkpoints" / "last")
    return ck


def train_loop(
    cfg: TrainConfig, rank: int = 0, world_size: int = 1, ray_ctx: bool = False
) -> dict[str, float]:
    """The training loop of one process; with Ray Train, model and loader go through its ``prepare_*``."""
    seed_everything(cfg.seed + rank)
    out = Path(cfg.output_dir)
    device = resolve_device(cfg.device) if not ray_ctx else _ray_device(cfg)
    dataset = make_dataset(cfg.dataset, cfg.policy)
    _check_aux_target(cfg, dataset)
    policy = cfg.policy.build()
    policy.set_normalization(compute_norm_stats(dataset))
    start_step = 0
    last = _last_checkpoint(out) if cfg.resume else None
    if last is not None:
        policy.load_checkpoint_files(last / "pretrained_model")
    policy.to(device).train()
    opt, sched = make_optimizer(policy, cfg.optim)
    if last is not None:
        start_step = load_training_state(last / "training_state", opt, sched)
        logger.info("resumed from %s at step %d", last, start_step)
    model: Any = policy
    if ray_ctx:
        import ray.train.torch as rtt

        model = rtt.prepare_model(policy)
    elif cfg.compile:  # in place: parameter names and checkpoints stay those of the plain modules
        for part in ("vision", "backbone"):
            if isinstance(getattr(policy, part, None), torch.nn.Module):
                getattr(policy, part).compile()
    if cfg.data_on_device and not ray_ctx and isinstance(dataset, PreloadedWindows):
        logger.info("batches gathered on %s (%d samples held there)", device, len(dataset))
        batches = dataset.to(device).batches(cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    else:
        batches = infinite(_loader(cfg, dataset, device, ray_ctx))
    metrics = MetricsLogger(out, cfg.tensorboard) if rank == 0 else None
    t0, sums, n = time.time(), {}, 0
    bar = tqdm(
        range(start_step, cfg.optim.steps),
        desc="train",
        disable=rank != 0,
        initial=start_step,
        total=cfg.optim.steps,
    )
    logs: dict[str, float] = {}
    done = start_step
    for step in bar:
        batch = to_policy_batch(next(batches), cfg.policy, device)
        if cfg.image_shift:
            keys = [k for k in (*cfg.policy.camera_keys, SUBGOAL_IMAGE) if k in batch]
            for k, v in zip(keys, random_shift([batch[k] for k in keys], cfg.image_shift), strict=True):
                batch[k] = v
        if cfg.colour_swap:
            keys = [k for k in (*cfg.policy.camera_keys, SUBGOAL_IMAGE) if k in batch]
            images, batch[TASK] = colour_swap([batch[k] for k in keys], list(batch[TASK]), cfg.colour_swap)
            batch.update(zip(keys, images, strict=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, logs = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip or float("inf"))
        opt.step()
        sched.step()
        for k, v in logs.items():  # summed on the device: no host sync until a log line is due
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        done = step + 1
        if rank == 0 and (done % cfg.log_every == 0 or done == cfg.optim.steps):
            avg = {k: float(v) / n for k, v in sums.items()}
            avg.update(lr=sched.get_last_lr()[0], grad_norm=float(gnorm), minutes=(time.time() - t0) / 60)
            metrics.log(done, avg)
            bar.set_postfix(loss=f"{avg['loss']:.3f}", act=f"{avg['action_loss']:.3f}")
            sums, n = {}, 0
        out_of_time = cfg.max_minutes is not None and time.time() - t0 >= cfg.max_minutes * 60
        if rank == 0 and (done % cfg.save_every == 0 or done == cfg.optim.steps or out_of_time):
            _save(out, done, policy, opt, sched)
        if out_of_time and done < cfg.optim.steps:
            logger.warning(
                "max_minutes=%s reached at step %d of %d; checkpoint saved, continue with --resume=true",
                cfg.max_minutes,
                done,
                cfg.optim.steps,
            )
            break
    if metrics is not None:
        metrics.close()
    result = {
        "train_minutes": (time.time() - t0) / 60,
        "trained_steps": done,
        "complete": done >= cfg.optim.steps,
        **{k: float(v) for k, v in logs.items()},
    }
    if rank == 0:
        (out / "train_summary.json").write_text(json.dumps(result, indent=2))
    return result


def _loader(cfg: TrainConfig, dataset: Any, device: torch.device, ray_ctx: bool) -> Any:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        drop_last=len(dataset) >= cfg.batch_size,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    if ray_ctx:
        import ray.train.torch as rtt

        loader = rtt.prepare_data_loader(loader)
    return loader


def _ray_device(cfg: TrainConfig) -> torch.device:
    import ray.train.torch as rtt

    return rtt.get_device() if cfg.distributed.use_gpu else torch.device("cpu")


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = draccus.decode(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    train_loop(cfg, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), ray_ctx=True)


def run(cfg: TrainConfig) -> dict[str, float]:
    """Prepare the run folder and tokenizer, then train in-process or with Ray Train."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and _last_checkpoint(out) is not None:
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume=true or a new --output_dir")
    _check_aux_target(cfg)
    cfg = _prepare_tokenizer(cfg)
    with open(out / "config.yaml", "w") as f:
        draccus.dump(cfg, f)
    if cfg.distributed.num_workers == 1:
        return train_loop(cfg)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)

    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": draccus.encode(cfg)},
        scaling_config=ScalingConfig(
            num_workers=cfg.distributed.num_workers, use_gpu=cfg.distributed.use_gpu
        ),
        run_config=RunConfig(storage_path=str((out / "ray").resolve()), name="train"),
    )
    trainer.fit()
    return json.loads((out / "train_summary.json").read_text())


@draccus.wrap()
def train(cfg: TrainConfig) -> None:
    """CLI entry: train the policy described by ``cfg``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(cfg)


def main() -> None:
    """Console-script entry point."""
    train()


if __name__ == "__main__":
    main()
