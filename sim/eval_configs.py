"""Configs of the demo collection command (`vla-collect`) and the rollout harness (`vla-sim-eval`).

Plain draccus dataclasses; YAML presets live in ``configs/sim/``. Rendering settings are the env's own
`sim.configs.RenderConfig`, nested (never copied up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.configs import RenderConfig
from sim.policies import needs_env


def _check_common(
    suite: str, tasks: list[str], policy: str, seed: int, max_steps: int | None, replan_every: int | None
) -> None:
    if not suite:
        raise ValueError("suite must name a suite (see sim.suites.list_suites()), e.g. --suite=embedded_goal")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks lists a task twice: {tasks}")
    if not policy:
        raise ValueError("policy must be 'expert', 'random', a checkpoint directory or a server URL")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or unset for the task's own limit), got {max_steps}")
    if replan_every is not None and replan_every < 1:
        raise ValueError(f"replan_every must be >= 1 (or unset to follow the policy), got {replan_every}")


@dataclass
class EvalConfig:
    """Rollout evaluation: for each task, episode i starts from fixed init state ``first_init_state + i``.

    Args:
        suite: Suite name (`sim.suites.list_suites()`).
        tasks: Task names to evaluate; empty means every task of the suite.
        episodes: Episodes per task (init states ``first_init_state .. first_init_state + episodes - 1``).
        first_init_state: Index of the first init state.
        init_split: ``eval`` (the fixed bank every reported figure uses) or ``train`` (the bank demos are
            collected from: a policy's success on scenes it trained on, for diagnosis).
        policy: ``expert``, ``random``, a checkpoint directory or an ``http://`` / ``ws://`` URL.
        num_workers: Ray actors running episodes in parallel; 1 runs in this process without Ray.
        seed: Base seed (random policies and action noise derive theirs from it per episode).
        replan_every: Executed actions per chunk; unset takes the policy's ``n_action_steps``.
        max_steps: Step limit override (unset: each task's own limit). Recorded in the results protocol.
        video: Write an mp4 per episode (agentview beside wrist, and the subgoal image if predicted).
        video_dir: Where videos go; unset means ``<out_dir>/videos``.
        max_videos_per_task: Cap on videos per task (the first init states); unset writes all.
        out_dir: Where ``results.json`` and the resolved ``config.yaml`` go.
        force_ray: Use Ray actors even for one worker (timing comparisons against more workers).
        vector_envs: Env subprocesses stepped in parallel around one policy in this process, which
            answers all of them in one batched call (``infer_batch``) at each replanning point
            (`sim.vector_eval`; one GPU, many cores). 1 runs without env subprocesses. Above 1 it needs
            a policy with ``infer_batch`` (a checkpoint directory) and excludes ``num_workers > 1`` and
            ``force_ray``. Recorded in the results protocol.
        render: Camera size and renderer settings of the env
            (`sim.configs.RenderConfig`).
    """

    suite: str = "embedded_goal"
    tasks: list[str] = field(default_factory=list)
    episodes: int = 50
    first_init_state: int = 0
    init_split: str = "eval"
    policy: str = "expert"
    num_workers: int = 1
    force_ray: bool = False
    vector_envs: int = 1
    seed: int = 0
    replan_every: int | None = None
    max_steps: int | None = None
    video: bool = False
    video_dir: str | None = None
    max_videos_per_task: int | None = None
    out_dir: str = "outputs/eval"
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        _check_common(self.suite, self.tasks, self.policy, self.seed, self.max_steps, self.replan_every)
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.first_init_state < 0:
            raise ValueError(f"first_init_state must be >= 0, got {self.first_init_state}")
        if self.init_split not in ("eval", "train"):
            raise ValueError(f"init_split must be 'eval' or 'train', got {self.init_split!r}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (1 runs in-process), got {self.num_workers}")
        if self.vector_envs < 1:
            raise ValueError(
                f"vector_envs must be >= 1 (1 runs without env subprocesses), got {self.vector_envs}"
            )
        if self.vector_envs > 1 and (self.num_workers > 1 or self.force_ray):
            raise ValueError(
                f"vector_envs={self.vector_envs} runs env subprocesses around one policy in this process "
                f"and cannot be combined with Ray workers (num_workers={self.num_workers}, "
                f"force_ray={self.force_ray}): set --num_workers=1 --force_ray=false, or --vector_envs=1 "
                "to run episodes on Ray actors"
            )
        if self.vector_envs > 1 and needs_env(self.policy):
            raise ValueError(
                f"vector_envs={self.vector_envs} cannot run policy {self.policy!r}: it is built per env (it "
                "reads the env's privileged state), so one batched policy cannot serve env subprocesses; "
                "use --vector_envs=1 (with --num_workers=N for parallel episodes)"
            )
        if self.max_videos_per_task is not None and self.max_videos_per_task < 0:
            raise ValueError(f"max_videos_per_task must be >= 0 or unset, got {self.max_videos_per_task}")
        if not self.out_dir:
            raise ValueError("out_dir must be a directory path, e.g. --out_dir=outputs/eval")


@dataclass
class CollectConfig:
    """Expert demonstration collection into a LeRobotDataset (resumable).

    Args:
        suite: Suite name (`sim.suites.list_suites()`).
        tasks: Task names; empty means every task of the suite.
        episodes_per_task: Episodes per task, from init states ``first_init_state ..`` onwards.
        first_init_state: Index of the first init state.
        init_split: Init-state bank: ``train`` (a bank disjoint from run_eval's, so a policy is not
            scored on the scenes it trained on), ``eval`` (run_eval's 50 states; LIBERO has only this
            one), or ``auto``: ``train`` for tasks that have a train bank
            (``sim/init_states/<suite>/train/``), else ``eval``.
        policy: Who acts (``expert`` for demos; any policy spec works).
        root: Dataset directory. An interrupted run with the same root resumes.
        repo_id: LeRobot repo id written into the dataset's metadata.
        overwrite: Delete an existing dataset at ``root`` first instead of resuming.
        action_noise: Std of Gaussian noise added to the arm's 6 action dims (gripper untouched).
        action_label: Which action the dataset records: ``executed`` (the noisy, clipped one that moved
            the arm) or ``expert`` (the policy's own action before the noise: DART-style labels, so the
            noise widens the states seen without teaching the noise).
        seed: Base seed of the noise.
        max_steps: Step limit override (unset: each task's own limit); episodes that hit it are dropped.
        commit_every: Saved episodes per commit; a kill loses at most the uncommitted ones.
        vcodec: Video codec of the dataset's mp4 files (LeRobot's choices, e.g. ``libsvtav1``, ``h264``).
        render: Camera size and renderer settings of the env
            (`sim.configs.RenderConfig`).
    """

    suite: str = "embedded_goal"
    tasks: list[str] = field(default_factory=list)
    episodes_per_task: int = 50
    first_init_state: int = 0
    init_split: str = "auto"
    policy: str = "expert"
    root: str = "data/demos/embedded_goal"
    repo_id: str = "local/embedded_goal_demos"
    overwrite: bool = False
    action_noise: float = 0.0
    action_label: str = "executed"
    seed: int = 0
    max_steps: int | None = None
    commit_every: int = 10
    vcodec: str = "libsvtav1"
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        _check_common(self.suite, self.tasks, self.policy, self.seed, self.max_steps, None)
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.first_init_state < 0:
            raise ValueError(f"first_init_state must be >= 0, got {self.first_init_state}")
        if self.init_split not in ("auto", "train", "eval"):
            raise ValueError(f"init_split must be 'auto', 'train' or 'eval', got {self.init_split!r}")
        if not self.root:
            raise ValueError("root must be a directory path for the dataset, e.g. --root=data/demos/x")
        if "/" not in self.repo_id:
            raise ValueError(
                f"repo_id must look like 'owner/name' (LeRobot convention), got {self.repo_id!r}"
            )
        if self.action_noise < 0:
            raise ValueError(f"action_noise is a std and must be >= 0, got {self.action_noise}")
        if self.action_label not in ("executed", "expert"):
            raise ValueError(f"action_label must be 'executed' or 'expert', got {self.action_label!r}")
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {self.commit_every}")
        valid_codecs = ("libsvtav1", "h264", "hevc")
        if self.vcodec not in valid_codecs:
            raise ValueError(f"vcodec must be one of {valid_codecs}, got {self.vcodec!r}")
