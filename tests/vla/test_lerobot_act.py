"""lerobot's ACT as a peer (vla/peers, vla-train-act): samples, statistics, training, checkpoint, adapter."""

import json
import subprocess
import sys
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch
import yaml

from vla.constants import ACTION, ACTION_IS_PAD, OBS_AGENTVIEW, OBS_STATE, OBS_WRIST
from vla.peers import PEER_FILE, is_peer_checkpoint, load_peer
from vla.peers.lerobot_act import (
    OBS_ENV_STATE,
    ActAdapter,
    ActNormStats,
    ActPolicyConfig,
    ActSamples,
    build_policy,
    peer_record,
)
from vla.scripts.train_act import ActTrainConfig, run
from vla.windows import Windows, load_windows, read_lerobot, save_windows

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["move the square to the right", "move the square down"]
EP_LEN = 12


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Windows:
    """vla.data's moving square (the task picks the direction), 2 episodes of EP_LEN frames at 32 px."""
    from vla.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", n_episodes=2, length=EP_LEN)
    w = read_lerobot("local/synthetic", str(root), size=None)
    assert w.tasks == TASKS
    return w


def make_obs(size: int = 128, task: str = TASKS[0], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        OBS_AGENTVIEW: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        OBS_WRIST: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        OBS_STATE: rng.normal(size=8).astype(np.float32),
        "task": task,
    }


def make_adapter(w: Windows, cfg: ActPolicyConfig | None = None, seed: int = 0) -> ActAdapter:
    torch.manual_seed(seed)
    cfg = cfg or ActPolicyConfig.tiny()
    samples = ActSamples(w, cfg)
    policy = build_policy(cfg, samples, "cpu")
    return ActAdapter(policy, samples.norm_stats(), peer_record(cfg, samples), "cpu")


def chunk_l1(adapter: ActAdapter, w: Windows) -> float:
    """Mean |predicted - demo| over every frame's unpadded chunk (raw action units)."""
    h = adapter.metadata["chunk_size"]
    ep = w.episode_index.numpy()
    errs = []
    for i in range(len(w)):
        obs = {k: w.frames[k][i].permute(1, 2, 0).numpy() for k in (OBS_AGENTVIEW, OBS_WRIST)}
        obs.update({OBS_STATE: w.states[i].numpy(), "task": w.tasks[int(w.task_index[i])]})
        pred = adapter.infer(obs)["actions"]
        n = min(h, int((ep == ep[i]).nonzero()[0][-1]) - i + 1)
        errs.append(np.abs(pred[:n] - w.actions[i : i + n].numpy()).mean())
    return float(np.mean(errs))


def test_samples_chunks_pad_past_episode_end(demos):
    torch.manual_seed(0)
    w = demos
    cfg = ActPolicyConfig.tiny(chunk_size=5, n_action_steps=5)
    samples = ActSamples(w, cfg)
    stats = samples.norm_stats().tensors("cpu")
    idx = torch.tensor([0, EP_LEN - 3, EP_LEN - 1, EP_LEN])
    batch = samples.batch(idx, stats)
    assert batch[ACTION].shape == (4, 5, 7)
    assert batch[OBS_AGENTVIEW].shape == batch[OBS_WRIST].shape == (4, 3, 32, 32)
    assert batch[ACTION_IS_PAD].tolist() == [
        [False] * 5,
        [False] * 3 + [True] * 2,
        [False] + [True] * 4,
        [False] * 5,  # first frame of episode 1
    ]
    raw = batch[ACTION] * stats["action_std"] + stats["action_mean"]
    # padded steps repeat the episode's last action, never the next episode's first
    torch.testing.assert_close(raw[1, 3:], w.actions[EP_LEN - 1].expand(2, 7))
    torch.testing.assert_close(raw[3], w.actions[EP_LEN : EP_LEN + 5])
    assert batch[OBS_ENV_STATE].tolist() == [[1.0, 0.0]] * 3 + [[0.0, 1.0]]


def test_norm_stats_values_and_round_trip(demos, tmp_path):
    w = demos
    stats = ActSamples(w, ActPolicyConfig.tiny()).norm_stats()
    np.testing.assert_allclose(stats.action_mean, w.actions.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        stats.state_std, np.maximum(w.states.double().std(0, unbiased=False).numpy(), 1e-3), rtol=1e-12
    )
    px = w.frames[OBS_WRIST].double() / 255
    np.testing.assert_allclose(stats.image_mean[OBS_WRIST], px.mean((0, 2, 3)).numpy(), rtol=1e-9)
    stats.save(tmp_path / "norm_stats.json")
    assert ActNormStats.load(tmp_path / "norm_stats.json") == stats


def test_adapter_output_shape_dtype_and_metadata(demos):
    adapter = make_adapter(demos)
    adapter.reset()
    out = adapter.infer(make_obs(128))  # the sim renders 128 px; the policy resizes to its 32
    assert set(out) == {"actions"}
    assert out["actions"].shape == (10, 7)
    assert out["actions"].dtype == np.float32
    assert np.all(np.abs(out["actions"]) <= 1.0)
    meta = adapter.metadata
    assert meta["policy_id"] == "lerobot_act"
    assert meta["n_action_steps"] == meta["chunk_size"] == 10
    assert meta["image_size"] == [32, 32]
    assert meta["tasks"] == TASKS
    batch = adapter.infer_batch([make_obs(128, seed=1), make_obs(64, TASKS[1], seed=2)])
    assert [b["actions"].shape for b in batch] == [(10, 7), (10, 7)]


def test_save_load_gives_identical_actions(demos, tmp_path):
    adapter = make_adapter(demos)
    path = adapter.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "norm_stats.json",
        PEER_FILE,
    ]
    assert json.loads((path / PEER_FILE).read_text())["type"] == "lerobot_act"
    assert not list(tmp_path.glob(".*"))  # the temp folder was renamed into place
    assert is_peer_checkpoint(path)
    loaded = load_peer(path)
    assert isinstance(loaded, ActAdapter)
    assert loaded.stats == adapter.stats
    assert loaded.metadata == adapter.metadata
    for seed in range(3):
        obs = make_obs(128, TASKS[seed % 2], seed)
        np.testing.assert_array_equal(loaded.infer(obs)["actions"], adapter.infer(obs)["actions"])
    # run_eval's loader (`--policy <dir>`) recognises the peer checkpoint by its peer.json
    from sim.policies import make_policy

    via_eval = make_policy(str(path))
    assert isinstance(via_eval, ActAdapter)
    obs = make_obs(128, TASKS[0], 7)
    np.testing.assert_array_equal(via_eval.infer(obs)["actions"], adapter.infer(obs)["actions"])


def test_device_from_env(demos, tmp_path, monkeypatch):
    path = make_adapter(demos).save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv(
        "VLA_POLICY_DEVICE", "meta"
    )  # any device torch knows; meta proves the variable is read
    assert load_peer(path).device.type == "meta"
    assert next(load_peer(path).policy.parameters()).device.type == "meta"
    monkeypatch.delenv("VLA_POLICY_DEVICE")
    assert load_peer(path).device == torch.device("cpu")
    assert load_peer(path, device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda o: o.pop(OBS_WRIST), "lacks camera 'observation.images.wrist'"),
        (lambda o: o.update({OBS_STATE: np.zeros(7, np.float32)}), r"must have shape \(8,\)"),
        (lambda o: o.update({OBS_STATE: np.full(8, np.nan, np.float32)}), "non-finite"),
        (lambda o: o.update({OBS_AGENTVIEW: np.zeros((64, 64, 3), np.float32)}), "HxWx3 uint8"),
        (lambda o: o.update({"task": "move the square to the left"}), "not one this ACT was trained on"),
        (lambda o: o.pop("task"), "non-empty instruction"),
    ],
    ids=["missing-camera", "state-dim", "state-nan", "float-image", "unknown-task", "no-task"],
)
def test_bad_input_is_a_clear_value_error(demos, change, match):
    adapter = make_adapter(demos)
    obs = make_obs(64)
    change(obs)
    with pytest.raises(ValueError, match=match):
        adapter.infer(obs)


def test_training_overfits_a_tiny_demo_set(demos, tmp_path):
    """vla-train-act on a windows folder: the chunk error really drops, and the checkpoint loads."""
    w = demos
    folder = save_windows(w, tmp_path / "windows")
    cfg = draccus.parse(
        ActTrainConfig,
        args=[
            f"--windows={folder}",
            f"--output_dir={tmp_path / 'run'}",
            "--steps=150",
            "--batch_size=12",
            "--log_every=10",
            "--save_every=100",
            "--device=cpu",
            "--optim.lr=3e-4",
            "--optim.lr_backbone=3e-4",
            "--policy.dim_model=64",
            "--policy.n_heads=4",
            "--policy.dim_feedforward=128",
            "--policy.n_encoder_layers=1",
            "--policy.n_vae_encoder_layers=1",
            "--policy.latent_dim=8",
            "--policy.dropout=0.0",
        ],
    )
    summary = run(cfg)
    out = tmp_path / "run"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(10, 151, 10))
    assert lines[-1]["l1_loss"] < 0.4 * lines[0]["l1_loss"], [x["l1_loss"] for x in lines]
    assert (out / "checkpoints" / "000100" / PEER_FILE).is_file()
    assert summary["steps"] == 150
    assert (out / "bench_train.json").is_file()
    # the loaded policy predicts the demo chunks far better than the same architecture untrained
    w_video = load_windows(folder)
    trained = load_peer(out / "checkpoint")
    untrained = ActAdapter(
        build_policy(cfg.policy, ActSamples(w_video, cfg.policy), "cpu"), trained.stats, trained.record, "cpu"
    )
    before, after = chunk_l1(untrained, w_video), chunk_l1(trained, w_video)
    assert after < 0.35 * before, (before, after)
    with pytest.raises(FileExistsError, match="overwrite"):
        run(cfg)


def test_yaml_preset_parses_and_builds(demos):
    path = ROOT / "configs/train/act_embedded_goal.yaml"
    cfg = draccus.parse(ActTrainConfig, config_path=str(path), args=["--windows=."])
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        sub = getattr(cfg, key)
        for k, v in value.items() if isinstance(value, dict) else [(None, value)]:
            got = sub if k is None else getattr(sub, k)
            assert got == v, f"{path.name}: {key}.{k}={got!r}, YAML says {v!r}"
    assert cfg.policy.chunk_size == cfg.policy.n_action_steps == 10
    torch.manual_seed(0)
    samples = ActSamples(demos, cfg.policy)  # its image_size 64 upsizes the 32 px demos
    policy = build_policy(cfg.policy, samples, "cpu")
    assert policy.config.pretrained_backbone_weights is None
    assert policy.config.use_vae
    batch = samples.batch(torch.arange(2), samples.norm_stats().tensors("cpu"))
    assert batch[OBS_AGENTVIEW].shape == (2, 3, 128, 128)  # upsampled right before the backbone
    loss, logs = policy(batch)
    assert torch.isfinite(loss)
    assert {"l1_loss", "kld_loss"} <= set(logs)


def test_config_validation_messages(demos):
    with pytest.raises(ValueError, match="n_action_steps"):
        ActPolicyConfig(chunk_size=10, n_action_steps=11)
    with pytest.raises(ValueError, match="task_conditioning"):
        ActPolicyConfig(task_conditioning="language")
    with pytest.raises(ValueError, match="lacks cameras"):
        ActSamples(demos, ActPolicyConfig.tiny(camera_keys=["observation.images.top"]))
    with pytest.raises(ValueError, match="--windows"):
        run(ActTrainConfig(output_dir="/nonexistent/never"))


def test_load_peer_refuses_unknown_types(tmp_path):
    with pytest.raises(FileNotFoundError, match=PEER_FILE):
        load_peer(tmp_path)
    (tmp_path / PEER_FILE).write_text(json.dumps({"type": "lerobot_akt"}))
    with pytest.raises(ValueError, match="Did you mean 'lerobot_act'"):
        load_peer(tmp_path)


def test_import_act_when_another_lerobot_policy_breaks():
    """The GPU machine's transformers 5 breaks lerobot's groot at import; ACT must still import alone."""
    code = (
        "import importlib.abc, sys\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'lerobot.policies.groot':\n"
        "            raise TypeError('non-default argument follows default argument')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "from vla.peers.lerobot_act import import_act\n"
        "act = import_act()\n"
        "print(act.ACTPolicy.__name__, 'lerobot.policies.groot' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ACTPolicy", "False"]
    assert "importing ACT alone" in res.stderr
