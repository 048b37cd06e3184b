"""The main job on the default small CPU configuration (console script ``vla-demo``).

Stages, in order: ``collect`` records a few expert demos per task of the default embedded suite as a
LeRobotDataset; ``eval_expert`` evaluates the scripted expert with `sim.run_eval`; ``train`` trains a
small CoT-VLA policy (subgoal tokenizer first) on those demos with ``vla-train``; ``eval`` evaluates the
trained checkpoint with `sim.run_eval` (Ray workers, videos with the predicted subgoal beside the
cameras). Everything lands under ``outputs/demo``.

Examples:
    vla-demo --config_path=configs/demo/default.yaml
    vla-demo --config_path=configs/demo/default.yaml --stages='[eval]' --eval.num_workers=1
"""

import dataclasses
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from sim.collect import REPORT_NAME, collect
from sim.eval_configs import CollectConfig, EvalConfig
from sim.run_eval import dump_config_atomic, evaluate, format_table, underscore_flags

STAGES = ("collect", "eval_expert", "train", "eval")


@dataclass
class DemoConfig:
    """The main job: which stages run and each stage's own config.

    Args:
        stages: Stages to run, in order (from ``collect``, ``eval_expert``, ``train``, ``eval``).
        out_dir: Folder of the job's resolved ``config.yaml``.
        collect: Demo collection settings.
        eval_expert: Expert evaluation settings.
        train_config: ``vla-train`` preset for the ``train`` stage (its dataset root is the demo
            folder and its output folder ``train_dir``).
        train_dir: Run folder of the ``train`` stage.
        eval: Evaluation of the trained checkpoint; its ``policy`` is replaced by the checkpoint
            (`sim.eval_configs.EvalConfig`).
    """

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    out_dir: str = "outputs/demo"
    collect: CollectConfig = field(
        default_factory=lambda: CollectConfig(
            episodes_per_task=2, root="outputs/demo/demos", repo_id="local/demo_embedded_goal"
        )
    )
    eval_expert: EvalConfig = field(
        default_factory=lambda: EvalConfig(
            episodes=2, num_workers=2, video=True, out_dir="outputs/demo/eval_expert"
        )
    )
    train_config: str = "configs/train/cot_vla_small_cpu.yaml"
    train_dir: str = "outputs/demo/train"
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(episodes=1, num_workers=2, video=True, out_dir="outputs/demo/eval")
    )

    @property
    def checkpoint(self) -> Path:
        """The trained policy that the ``eval`` stage evaluates."""
        return Path(self.train_dir) / "checkpoints" / "last" / "pretrained_model"

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"stages must be a non-empty list drawn from {list(STAGES)}, got {self.stages}")


def run_demo(cfg: DemoConfig) -> dict:
    """Run the stages of ``cfg``; return ``{"collect": report, "eval": results}`` for those that ran."""
    log = logging.getLogger("vla-demo")
    dump_config_atomic(cfg, Path(cfg.out_dir) / "config.yaml")
    out: dict = {}
    for stage in cfg.stages:
        t0 = time.perf_counter()
        log.info("stage %s ...", stage)
        if stage == "collect":
            out["collect"] = collect(cfg.collect)
        elif stage == "eval_expert":
            out["eval_expert"] = evaluate(cfg.eval_expert, command="vla-demo (eval_expert stage)")
        elif stage == "train":
            _train(cfg)
            out["train"] = str(cfg.checkpoint)
        elif stage == "eval":
            if not any((cfg.checkpoint / name).exists() for name in ("config.yaml", "config.json")):
                raise FileNotFoundError(
                    f"no trained checkpoint at {cfg.checkpoint}; "
                    "run the train stage first (--stages='[train,eval]')"
                )
            eval_cfg = dataclasses.replace(cfg.eval, policy=str(cfg.checkpoint))
            out["eval"] = evaluate(eval_cfg, command="vla-demo (eval stage)")
        log.info("stage %s done in %.1fs", stage, time.perf_counter() - t0)
    return out


def _train(cfg: DemoConfig) -> None:
    """Train through the ``vla-train`` command in a child process (``sim`` imports no model code)."""
    cmd = [
        sys.executable,
        "-m",
        "vla.scripts.train",
        f"--config_path={cfg.train_config}",
        f"--dataset.root={cfg.collect.root}",
        f"--dataset.repo_id={cfg.collect.repo_id}",
        f"--output_dir={cfg.train_dir}",
    ]
    if (Path(cfg.train_dir) / "checkpoints" / "last").exists():
        cmd.append("--resume=true")  # an interrupted demo picks up where training stopped
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


@draccus.wrap()
def demo_main(cfg: DemoConfig) -> dict:
    """Run the main job and print where its outputs are."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = run_demo(cfg)
    lines = ["", "=== vla-demo done ==="]
    if "collect" in out:
        r = out["collect"]
        lines.append(
            f"demos:   {cfg.collect.root} (LeRobotDataset, {r['saved_episodes']} episodes, "
            f"{r['dropped_episodes']} dropped; report {Path(cfg.collect.root) / REPORT_NAME})"
        )
    for key, ecfg in (("eval_expert", cfg.eval_expert), ("eval", cfg.eval)):
        if key in out:
            lines.append(f"--- {key}: {out[key].get('policy_id', '')}")
            lines.append(format_table(out[key]))
            lines.append(f"results: {Path(ecfg.out_dir) / 'results.json'}")
            if ecfg.video:
                lines.append(f"videos:  {ecfg.video_dir or Path(ecfg.out_dir) / 'videos'}")
    if "train" in out:
        lines.append(f"policy:  {out['train']} (metrics: {Path(cfg.train_dir) / 'metrics.jsonl'})")
    print("\n".join(lines))
    return out


def main() -> None:
    """Console script ``vla-demo``."""
    sys.argv[1:] = underscore_flags(sys.argv[1:])
    demo_main()


if __name__ == "__main__":
    main()
