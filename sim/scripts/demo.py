"""The main job on the default small CPU configuration (console script ``vla-demo``).

Stages, in order: ``collect`` records a few expert demos per task of the default embedded suite as a
LeRobotDataset; ``eval`` evaluates the expert with `sim.run_eval` on a few init states per task (Ray
workers, videos on). Later issues add training and serving stages. Everything lands under ``outputs/demo``.

Examples:
    vla-demo --config_path=configs/demo/default.yaml
    vla-demo --config_path=configs/demo/default.yaml --stages='[eval]' --eval.num_workers=1
"""

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from sim.collect import REPORT_NAME, collect
from sim.eval_configs import CollectConfig, EvalConfig
from sim.run_eval import dump_config_atomic, evaluate, format_table, underscore_flags

STAGES = ("collect", "eval")


@dataclass
class DemoConfig:
    """The main job: which stages run and each stage's own config.

    Args:
        stages: Stages to run, in order (from ``collect``, ``eval``).
        out_dir: Folder of the job's resolved ``config.yaml``.
        collect: Demo collection settings.
        eval: Expert evaluation settings
            (`sim.eval_configs.EvalConfig`).
    """

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    out_dir: str = "outputs/demo"
    collect: CollectConfig = field(
        default_factory=lambda: CollectConfig(
            episodes_per_task=2, root="outputs/demo/demos", repo_id="local/demo_embedded_goal"
        )
    )
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(episodes=2, num_workers=2, video=True, out_dir="outputs/demo/eval")
    )

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
        elif stage == "eval":
            out["eval"] = evaluate(cfg.eval, command="vla-demo (eval stage)")
        log.info("stage %s done in %.1fs", stage, time.perf_counter() - t0)
    return out


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
    if "eval" in out:
        lines.append(format_table(out["eval"]))
        lines.append(f"results: {Path(cfg.eval.out_dir) / 'results.json'}")
        if cfg.eval.video:
            lines.append(f"videos:  {cfg.eval.video_dir or Path(cfg.eval.out_dir) / 'videos'}")
    print("\n".join(lines))
    return out


def main() -> None:
    """Console script ``vla-demo``."""
    sys.argv[1:] = underscore_flags(sys.argv[1:])
    demo_main()


if __name__ == "__main__":
    main()
