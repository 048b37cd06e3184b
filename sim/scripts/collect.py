"""Record scripted-expert demos as a LeRobotDataset (console script ``vla-collect``).

Examples:
    vla-collect --suite=embedded_goal --episodes_per_task=2 --root=data/demos/embedded_goal_small
    vla-collect --config_path=configs/sim/collect_embedded_goal.yaml
    vla-collect --suite=robosuite_stock --tasks='[lift]' --episodes_per_task=50 --action_noise=0.05

Rerunning the same command after an interruption resumes from the last commit (``--commit_every``
episodes); ``--overwrite=true`` starts over.
"""

import logging
import sys
from pathlib import Path

import draccus

from sim.collect import REPORT_NAME, collect
from sim.eval_configs import CollectConfig
from sim.run_eval import underscore_flags


@draccus.wrap()
def collect_main(cfg: CollectConfig) -> dict:
    """Collect demos per ``cfg`` and print where the dataset and its report are."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = collect(cfg)
    print(
        f"dataset: {cfg.root} ({report['saved_episodes']} episodes saved, "
        f"{report['dropped_episodes']} failed expert episodes dropped)\n"
        f"report:  {Path(cfg.root) / REPORT_NAME}"
    )
    return report


def main() -> None:
    """Console script ``vla-collect``."""
    sys.argv[1:] = underscore_flags(sys.argv[1:])
    collect_main()


if __name__ == "__main__":
    main()
