r"""CoT vs no-CoT (and lerobot's ACT) on the embedded Goal-like suite: same data, same budget, same eval.

Stages (each can run on another machine; they meet in ``--out_dir``):

``train``   one variant (``cot``: subgoal tokenizer, then the policy; ``no_cot``: the ablation with the same
            config, steps and seed) from a LeRobotDataset (``--dataset_root``) or a windows folder
            (``--windows``, :mod:`vla.windows`; what the GPU machine gets). Writes
            ``<out_dir>/<variant>/bench_train.json`` (wall minutes, device, steps, batch).
``eval``    ``sim.run_eval.evaluate`` of a variant's checkpoint on ``--episodes`` init states of every task,
            into ``<out_dir>/eval_<variant>/results.json`` (the GPU machine runs the same evaluation as
            parallel single-task processes instead: ``scripts/device/``; the results files are the same).
``report``  ``bench/results/policy_embedded.json``: headline ``success_cot``, ``success_no_cot``,
            ``success_lerobot_act`` (when ``<out_dir>/eval_lerobot_act`` exists), ``train_minutes`` (CoT,
            tokenizer included) and the others' minutes; a row per variant and task.

Examples:
    # GPU machine (windows folder written by vla-export-windows from >= 50 demos per task)
    python -m bench.policy_embedded train --variant=cot --windows=data/windows/embedded_goal
    python -m bench.policy_embedded train --variant=no_cot --windows=data/windows/embedded_goal
    # evaluation (here, or the device shard launcher), then the report
    python -m bench.policy_embedded eval --variant=cot --episodes=50 --num_workers=2
    python -m bench.policy_embedded report
    # CPU smoke run (meaningless numbers; results to /tmp)
    python -m bench.policy_embedded train --variant=cot --dataset_root=outputs/demo/demos \
        --train_config=configs/train/cot_vla_tiny.yaml --steps=20 --tokenizer_steps=20 --out_dir=/tmp/pe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import RESULTS_DIR, device_name, write_results

VARIANTS = ("cot", "no_cot", "lerobot_act")


def checkpoint_dir(out_dir: str | Path, variant: str) -> Path:
    """Where a variant's trained checkpoint lands."""
    if variant == "lerobot_act":
        return Path(out_dir) / variant / "checkpoint"
    return Path(out_dir) / variant / "checkpoints" / "last" / "pretrained_model"


def train_variant(args: argparse.Namespace) -> dict:
    """Train ``args.variant`` (cot or no_cot) and record its wall time."""
    import draccus

    from vla.scripts.train import TrainConfig, run

    if args.variant not in ("cot", "no_cot"):
        raise ValueError(
            f"train takes --variant cot or no_cot (ACT trains with vla-train-act), got {args.variant}"
        )
    if (args.windows is None) == (args.dataset_root is None):
        raise ValueError("give exactly one of --windows (a vla-export-windows folder) or --dataset_root")
    out = Path(args.out_dir) / args.variant
    data = [f"--dataset.windows={args.windows}"] if args.windows else [f"--dataset.root={args.dataset_root}"]
    overrides = [
        *data,
        f"--output_dir={out}",
        f"--policy.use_cot={str(args.variant == 'cot').lower()}",
        f"--seed={args.seed}",
        "--tensorboard=false",
        f"--device={args.device}",
    ]
    if args.steps:
        overrides += [f"--optim.steps={args.steps}", f"--optim.warmup_steps={min(args.steps // 10, 200)}"]
    if args.batch_size:
        overrides.append(f"--batch_size={args.batch_size}")
    if args.tokenizer_steps is not None:
        overrides.append(f"--tokenizer_steps={args.tokenizer_steps}")
    if args.num_workers is not None:
        overrides.append(f"--num_workers={args.num_workers}")
    if args.tokenizer_path:
        overrides.append(f"--policy.tokenizer_path={args.tokenizer_path}")
    if args.image_shift is not None:
        overrides.append(f"--image_shift={args.image_shift}")
    if args.lr:
        overrides.append(f"--optim.lr={args.lr}")
    if args.max_minutes:
        overrides.append(f"--max_minutes={args.max_minutes}")
    if args.resume:
        overrides.append("--resume=true")
    if args.compile is not None:
        overrides.append(f"--compile={args.compile}")
    if args.log_every:
        overrides.append(f"--log_every={args.log_every}")
    if args.film_dim is not None:
        overrides.append(f"--policy.vision.film_dim={args.film_dim}")
    if args.aux_target_weight is not None:
        overrides.append(f"--policy.aux_target_weight={args.aux_target_weight}")
    if args.state_dropout is not None:
        overrides.append(f"--policy.state_dropout={args.state_dropout}")
    if args.subgoal_noise is not None:
        overrides.append(f"--policy.subgoal_noise={args.subgoal_noise}")
    if args.colour_swap is not None:
        overrides.append(f"--colour_swap={args.colour_swap}")
    cfg = draccus.parse(TrainConfig, config_path=args.train_config, args=overrides)
    t0 = time.perf_counter()
    summary = run(cfg)
    record = {
        "variant": args.variant,
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "loop_minutes": round(summary["train_minutes"], 2),
        "device": device_name(),
        "steps": cfg.optim.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.optim.lr,
        "image_shift": cfg.image_shift,
        "film_dim": getattr(cfg.policy.vision, "film_dim", 0),
        "aux_target_weight": getattr(cfg.policy, "aux_target_weight", 0.0),
        "state_dropout": getattr(cfg.policy, "state_dropout", 0.0),
        "subgoal_noise": getattr(cfg.policy, "subgoal_noise", 0.0),
        "colour_swap": cfg.colour_swap,
        "compile": cfg.compile,
        "tokenizer_path": args.tokenizer_path,
        "train_config": args.train_config,
        "data": args.windows or args.dataset_root,
        "final": {k: v for k, v in summary.items() if k != "train_minutes"},
    }
    (out / "bench_train.json").write_text(json.dumps(record, indent=2))
    return record


def eval_variant(args: argparse.Namespace) -> dict:
    """run_eval on every (or the given) task of the suite."""
    from sim.eval_configs import EvalConfig
    from sim.run_eval import evaluate

    cfg = EvalConfig(
        suite=args.suite,
        tasks=list(args.tasks or []),
        episodes=args.episodes,
        policy=str(args.policy or checkpoint_dir(args.out_dir, args.variant)),
        num_workers=args.eval_workers,
        seed=args.seed,
        video=args.video,
        max_videos_per_task=2,
        out_dir=str(Path(args.out_dir) / f"eval_{args.variant}"),
    )
    return evaluate(cfg, command=f"bench.policy_embedded eval --variant={args.variant}")


def _task_rows(variant: str, res: dict) -> list[dict]:
    """One row per task of a run_eval ``results.json`` (success rate, episodes, Wilson interval)."""
    return [
        {
            "variant": variant,
            "task": task,
            "success_rate": t["success_rate"],
            "episodes": t["episodes"],
            "ci95": t.get("ci95"),
        }
        for task, t in sorted(res["tasks"].items())
    ]


def report(args: argparse.Namespace) -> Path:
    """Collect train and eval records of every variant present into ``<results_dir>/<name>.json`` (+ PNG)."""
    out = Path(args.out_dir)
    rows, headline, config = [], {}, {"suite": args.suite, "variants": {}}
    train_device = None
    for variant in VARIANTS:
        res_path = out / f"eval_{variant}" / "results.json"
        train_path = out / variant / "bench_train.json"
        if not res_path.is_file():
            if train_path.is_file():  # trained, never evaluated: say so rather than drop it
                config["variants"][variant] = {"train": json.loads(train_path.read_text()), "eval": "not run"}
            continue
        res = json.loads(res_path.read_text())
        headline[f"success_{variant}"] = round(float(res["mean_success"]), 4)
        train = json.loads(train_path.read_text()) if train_path.is_file() else {}
        if train:
            key = "train_minutes" if variant == "cot" else f"train_minutes_{variant}"
            # a tokenizer trained in an earlier call (--tokenizer_path) counts towards CoT's budget
            headline[key] = round(train["minutes"] + train.get("tokenizer_minutes", 0.0), 2)
            train_device = train_device or train.get("device")
        config["variants"][variant] = {
            "train": train,
            "eval_episodes": sum(t["episodes"] for t in res["tasks"].values()),
            # the device's shard launcher marks a merge that lacks shards (cut by a call's time limit)
            "eval_complete": bool(res.get("complete", True)),
            "eval_missing": res.get("missing", []),
            "eval_policy": res.get("policy"),
            "eval_protocol": res.get("protocol"),
        }
        rows += _task_rows(variant, res)
    for spec in args.extra_eval or []:  # earlier or ablation runs: rows and picture, not the headline
        name, sep, folder = spec.partition("=")
        if not sep or not name or name in VARIANTS or not (Path(folder) / "results.json").is_file():
            raise SystemExit(
                f"--extra_eval {spec!r}: use NAME=DIR (NAME not {VARIANTS}, DIR with results.json)"
            )
        res = json.loads((Path(folder) / "results.json").read_text())
        train_path = Path(folder) / "bench_train.json"
        config.setdefault("extra_runs", {})[name] = {
            "success": round(float(res["mean_success"]), 4),
            "train": json.loads(train_path.read_text()) if train_path.is_file() else {},
            "eval_episodes": sum(t["episodes"] for t in res["tasks"].values()),
            "eval_complete": bool(res.get("complete", True)),
            "eval_policy": res.get("policy"),
        }
        rows += _task_rows(name, res)
    if "success_cot" not in headline:
        raise FileNotFoundError(f"no {out / 'eval_cot' / 'results.json'}: run the eval stage first")
    if args.dataset_note:
        config["dataset"] = args.dataset_note
    # a variant whose eval was cut by a call's time limit makes a partial headline: say so in it
    headline["eval_complete"] = all(v.get("eval_complete", False) for v in config["variants"].values())
    old_path = Path(args.results_dir) / f"{args.name}.json"
    if args.keep_config:  # notes of earlier runs (previous_runs, ...) carried over from the file it replaces
        old = json.loads(old_path.read_text())["config"] if old_path.is_file() else {}
        missing = [k for k in args.keep_config if k not in old]
        if missing:
            raise SystemExit(f"--keep_config {missing}: not in the config of {old_path}")
        config.update({k: old[k] for k in args.keep_config if k not in config})
    path = write_results(
        args.name,
        rows=rows,
        headline=headline,
        device=f"train: {train_device}; eval: {args.eval_device}",
        out_dir=args.results_dir,
        config=config,
        command=args.command,
    )
    from bench.common import plot_task_success

    by_variant: dict[str, dict] = {}
    for r in rows:  # successes from the rate: run_eval's rates are k / n exactly
        k = round(r["success_rate"] * r["episodes"])
        by_variant.setdefault(r["variant"], {})[r["task"]] = (k, r["episodes"])
    plot_task_success(
        [{"run": v, "tasks": t} for v, t in by_variant.items()],
        path.with_suffix(".png"),
        title=f"{args.name} ({args.suite})\nclosed-loop success per task, 50 eval init states each"
        + ("" if headline["eval_complete"] else " (eval incomplete: tasks missing)"),
    )
    print(json.dumps({"path": str(path), "headline": headline}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("train", "eval", "report"))
    ap.add_argument("--variant", choices=VARIANTS, default="cot")
    ap.add_argument("--windows", default=None, help="vla-export-windows folder (train)")
    ap.add_argument("--dataset_root", default=None, help="LeRobotDataset folder (train)")
    ap.add_argument("--train_config", default="configs/train/cot_vla_embedded_goal.yaml")
    ap.add_argument("--steps", type=int, default=0, help="override optim.steps (0 keeps the config's)")
    ap.add_argument("--batch_size", type=int, default=0, help="override batch_size (0 keeps the config's)")
    ap.add_argument("--tokenizer_steps", type=int, default=None)
    ap.add_argument("--tokenizer_path", default=None, help="trained tokenizer folder (cot)")
    ap.add_argument("--image_shift", type=int, default=None, help="override image_shift (pixels)")
    ap.add_argument("--max_minutes", type=float, default=0.0, help="stop with a checkpoint after this long")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument(
        "--compile",
        choices=("true", "false"),
        default=None,
        help="torch.compile vision and backbone for training (default: the config's)",
    )
    ap.add_argument("--log_every", type=int, default=0, help="override log_every (0 keeps the config's)")
    ap.add_argument("--lr", type=float, default=0.0, help="override optim.lr (0 keeps the config's)")
    ap.add_argument(
        "--film_dim", type=int, default=None, help="policy.vision.film_dim (384: FiLM on the instruction)"
    )
    ap.add_argument(
        "--aux_target_weight",
        type=float,
        default=None,
        help="policy.aux_target_weight (grounding; the windows need target_pos: python -m sim.targets)",
    )
    ap.add_argument(
        "--state_dropout",
        type=float,
        default=None,
        help="policy.state_dropout (share of samples trained without the robot state token)",
    )
    ap.add_argument(
        "--subgoal_noise",
        type=float,
        default=None,
        help="policy.subgoal_noise (largest share of input subgoal codes replaced by random ones)",
    )
    ap.add_argument(
        "--colour_swap",
        type=float,
        default=None,
        help="colour_swap (share of samples with permuted RGB channels and renamed colour words)",
    )
    ap.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (train)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--suite", default="embedded_goal")
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--policy", default=None, help="checkpoint to evaluate (default: the variant's)")
    ap.add_argument("--eval_workers", type=int, default=1)
    ap.add_argument("--video", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="outputs/bench/policy_embedded")
    ap.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--eval_device", default="AMD EPYC, 2 cores", help="where the eval ran (report)")
    ap.add_argument("--dataset_note", default="", help="how the demos were made (report)")
    ap.add_argument(
        "--extra_eval",
        action="append",
        default=None,
        help="NAME=DIR of another run (results.json, optional bench_train.json): rows and picture (report)",
    )
    ap.add_argument("--command", default=None, help="the command line(s) recorded in the report")
    ap.add_argument("--name", default="policy_embedded", help="results file name (report)")
    ap.add_argument(
        "--keep_config",
        nargs="*",
        default=[],
        help="config keys carried over from the results file this report replaces (report)",
    )
    args = ap.parse_args()
    if args.stage == "train":
        print(json.dumps(train_variant(args)))
    elif args.stage == "eval":
        res = eval_variant(args)
        print(json.dumps({"variant": args.variant, "mean_success": res["mean_success"]}))
    else:
        report(args)


if __name__ == "__main__":
    main()
