"""Generate the fixed init states of the embedded suites (``sim/init_states/<suite>/<task>.npz``).

Each state is drawn from the env's own placement sampler with numpy's global RNG seeded per task,
so a rerun with the same versions reproduces the files. ``settled_state`` stores each state's
``observation.state`` and ``settled_qpos`` the full ``qpos`` after restore and wait steps: the
golden start states that tests compare. Run it only when a scene changes; the
files are committed and ``tests/sim/test_envs.py`` checks that they still load and match.

Example:
    python -m sim.envs.make_init_states --suites embedded_goal robosuite_stock
    python -m sim.envs.make_init_states --suites robosuite_stock --tasks door --num 50
    # the disjoint training bank that demos are collected from (sim/init_states/<suite>/train/)
    python -m sim.envs.make_init_states --suites embedded_goal --split train --num 100
    # LIBERO: only a train bank (its eval bank is LIBERO's 50 official states per task); refused for a
    # scene whose drawn states do not look like the official ones (check_like_official)
    python -m sim.envs.make_init_states --suites libero_object --split train --num 100
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import zlib
from importlib.metadata import version

import numpy as np

from sim.base import INIT_SPLITS, NUM_INIT_STATES, init_state_path, save_init_states
from sim.configs import RenderConfig
from sim.suites import EMBEDDED_SUITES, get_suite, make_env

logger = logging.getLogger(__name__)


def task_seed(suite: str, task: str, base_seed: int = 0) -> int:
    """A stable per-task seed (crc32 of ``suite/task``, plus ``base_seed``)."""
    return (zlib.crc32(f"{suite}/{task}".encode()) + base_seed) % (2**32)


TRAIN_SEED_OFFSET = 1_000_003
"""Added to ``base_seed`` for the train split, so its placements never replay the eval bank's."""


MAX_MEAN_SHIFT = 0.05
"""How far a drawn bank's mean ``qpos`` may sit from the official bank's, in any dimension (m or rad)."""


def check_like_official(suite: str, task: str, env, states: np.ndarray) -> None:
    """Refuse a LIBERO train bank whose scenes do not look like LIBERO's official ones.

    Compares the mean ``qpos`` of the drawn states with that of the official 50. hf-libero's placement
    sampler reproduces the official layout of every libero_object scene (means within 5 mm), but not
    of five libero_spatial scenes (the bowl on the stove lands 0.4 m from its official spot and the
    expert fails there): demos from such a bank would teach other scenes than the ones run_eval scores.
    """
    from sim.envs.libero import official_init_states

    official = official_init_states(suite, int(env.task.extra["benchmark_index"]))
    nq = env.rs_env.sim.model.nq
    shift = np.abs(states[:, 1 : 1 + nq].mean(0) - official[:, 1 : 1 + nq].mean(0)).max()
    if shift > MAX_MEAN_SHIFT:
        raise ValueError(
            f"{suite}/{task}: the drawn init states' mean qpos is {shift:.3f} away from the official states' "
            f"(limit {MAX_MEAN_SHIFT}): hf-libero's placement sampler does not reproduce this scene's "
            "official layout, so no train bank is written"
        )


def generate(
    suite: str, task: str, num: int = NUM_INIT_STATES, base_seed: int = 0, split: str = "eval"
) -> np.ndarray:
    """Draw ``num`` init states of ``suite``/``task`` into ``split`` and write them; returns ``(num, D)``."""
    if suite.startswith("libero_") and split != "train":
        raise ValueError(
            f"{suite}'s eval bank is LIBERO's official init states and is not regenerated here; "
            "pass --split train for a demo bank"
        )
    env = make_env(suite, task, render=RenderConfig.off())
    try:
        seed = task_seed(suite, task, base_seed + (TRAIN_SEED_OFFSET if split == "train" else 0))
        rng_state = np.random.get_state()
        np.random.seed(seed)
        try:
            states = np.stack([env.sample_init_state() for _ in range(num)])
        finally:
            np.random.set_state(rng_state)
        if suite.startswith("libero_"):
            check_like_official(suite, task, env, states)
        env._init_states = states
        # Golden start states: observation.state after restore + wait steps, for drift tests.
        settled, settled_qpos = [], []
        for i in range(num):
            settled.append(env.reset(options={"init_state": i})[0]["observation.state"])
            settled_qpos.append(np.array(env.rs_env.sim.data.qpos))
        model = env.rs_env.sim.model
        meta = {
            "suite": suite,
            "task": task,
            "split": split,
            "seed": seed,
            "num": num,
            "nq": int(model.nq),
            "nv": int(model.nv),
            "robosuite": version("robosuite"),
            "mujoco": version("mujoco"),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        save_init_states(
            init_state_path(suite, task, split),
            states,
            meta,
            settled_state=np.stack(settled),
            settled_qpos=np.stack(settled_qpos),
        )
        return states
    finally:
        env.close()


def main() -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", default=list(EMBEDDED_SUITES))
    p.add_argument("--tasks", nargs="*", default=None, help="task names (default: all tasks of each suite)")
    p.add_argument("--num", type=int, default=NUM_INIT_STATES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split", choices=INIT_SPLITS, default="eval", help="eval bank or the disjoint train bank"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for suite in args.suites:
        for spec in get_suite(suite).tasks:
            if args.tasks and spec.name not in args.tasks:
                continue
            states = generate(suite, spec.name, args.num, args.seed, args.split)
            path = init_state_path(suite, spec.name, args.split)
            logger.info("%s/%s: %s -> %s", suite, spec.name, states.shape, path)


if __name__ == "__main__":
    main()
