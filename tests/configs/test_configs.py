"""Every YAML preset under configs/sim and configs/demo parses into its dataclass (and validates)."""

from pathlib import Path

import draccus
import pytest
import yaml

from sim.eval_configs import CollectConfig, EvalConfig
from sim.scripts.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[2]


def _config_class(path: Path) -> type:
    if path.parent.name == "demo":
        return DemoConfig
    if path.name.startswith("eval_"):
        return EvalConfig
    if path.name.startswith("collect_"):
        return CollectConfig
    raise AssertionError(f"{path}: name it eval_*.yaml or collect_*.yaml so its config class is known")


PRESETS = sorted([*ROOT.glob("configs/sim/*.yaml"), *ROOT.glob("configs/demo/*.yaml")])


def test_presets_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PRESETS}
    assert "configs/demo/default.yaml" in names
    assert any(n.startswith("configs/sim/eval_") for n in names)
    assert any(n.startswith("configs/sim/collect_") for n in names)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_preset_parses(path: Path):
    cls = _config_class(path)
    cfg = draccus.parse(cls, config_path=str(path), args=[])
    assert isinstance(cfg, cls)
    # Every key written in the YAML must reach the config (a typo would be silently ignored otherwise).

    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        got = getattr(cfg, key)
        if not isinstance(value, dict):
            assert got == value, f"{path.name}: {key}={got!r}, YAML says {value!r}"


def test_demo_default_is_small():
    cfg = draccus.parse(DemoConfig, config_path=str(ROOT / "configs/demo/default.yaml"), args=[])
    assert cfg.stages == ["collect", "train", "eval"]
    assert cfg.collect.episodes_per_task <= 5
    assert cfg.eval.episodes <= 5
    assert cfg.eval.video
    assert cfg.train_config == "configs/train/cot_vla_small_cpu.yaml"
    assert (ROOT / cfg.train_config).exists()
    assert cfg.checkpoint == Path(cfg.train_dir) / "checkpoints" / "last" / "pretrained_model"


def test_cli_override_on_top_of_preset():
    path = ROOT / "configs/sim/eval_embedded_goal_expert.yaml"
    cfg = draccus.parse(EvalConfig, config_path=str(path), args=["--episodes=3", "--render.image_size=64"])
    assert cfg.episodes == 3
    assert cfg.render.image_size == 64
    assert cfg.suite == "embedded_goal"


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (EvalConfig, {"episodes": 0}, "episodes must be >= 1"),
        (EvalConfig, {"num_workers": 0}, "num_workers"),
        (EvalConfig, {"tasks": ["a", "a"]}, "twice"),
        (EvalConfig, {"replan_every": 0}, "replan_every"),
        (CollectConfig, {"action_noise": -0.1}, "action_noise"),
        (CollectConfig, {"repo_id": "noslash"}, "owner/name"),
        (CollectConfig, {"vcodec": "mjpeg"}, "vcodec"),
        (DemoConfig, {"stages": ["train_on_moon"]}, "stages"),
    ],
)
def test_bad_values_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
