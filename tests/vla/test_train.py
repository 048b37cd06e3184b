"""Training: LeRobot windows, tokenizer PSNR, vla-train run/resume, overfitting one episode, presets."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch

import vla
from vla.configs import CotVlaConfig, PolicyConfig
from vla.constants import ACTION, OBS_AGENTVIEW, SUBGOAL_IMAGE
from vla.data import DatasetConfig, compute_norm_stats, make_dataset, make_synthetic_dataset, to_policy_batch
from vla.scripts.train import TrainConfig, run
from vla.scripts.train_tokenizer import TokenizerTrainConfig, train_tokenizer
from vla.tokenizer.fsq import FSQAutoencoder
from vla.training import OptimConfig

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ROOT / "configs" / "train" / "cot_vla_tiny.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_episodes=2, length=16)


def test_windows_follow_delta_timestamps(synth):
    cfg = CotVlaConfig.tiny()
    ds = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth)), cfg)
    item = ds[3]  # episode 0, frame 3
    assert item[OBS_AGENTVIEW].shape == (2, 3, 32, 32)
    assert item[ACTION].shape == (10, 7)
    full = ds.hf_dataset.with_format("numpy")
    np.testing.assert_allclose(item[ACTION].numpy(), np.stack(full[ACTION][3:13]), atol=1e-6)
    later = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth)))[3 + cfg.subgoal_offset]
    torch.testing.assert_close(item[OBS_AGENTVIEW][1], later[OBS_AGENTVIEW])  # subgoal = frame t+k
    end = ds[14]  # near the episode end: actions padded, subgoal clamped to the last frame
    assert end["action_is_pad"].tolist() == [False, False] + [True] * 8
    batch = to_policy_batch(torch.utils.data.default_collate([item, end]), cfg, "cpu")
    assert batch[SUBGOAL_IMAGE].shape == (2, 3, 32, 32)
    assert batch[OBS_AGENTVIEW].shape == (2, 3, 32, 32)
    stats = compute_norm_stats(ds)
    assert stats.action_q01[6] == -1.0
    assert stats.action_q99[6] == 1.0
    with pytest.raises(ValueError, match="control_hz"):
        make_dataset(
            DatasetConfig(repo_id="local/synthetic", root=str(synth)), CotVlaConfig.tiny(control_hz=10)
        )


def test_preloaded_windows_equal_lerobot_items(synth):
    cfg = CotVlaConfig.tiny()
    ref = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth)), cfg)
    pre = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth), preload=True), cfg)
    assert len(pre) == len(ref) == 32
    for i in (0, 5, 14, 15, 16, 31):  # episode starts, ends and a clamped subgoal
        a, b = ref[i], pre[i]
        for key in (OBS_AGENTVIEW, "observation.images.wrist", "observation.state", ACTION, "action_is_pad"):
            assert a[key].shape == b[key].shape, key
            torch.testing.assert_close(b[key], a[key], atol=1 / 255, rtol=0, msg=key)
        assert a["task"] == b["task"]
    sub = make_dataset(
        DatasetConfig(repo_id="local/synthetic", root=str(synth), episodes=[1], preload=True), cfg
    )
    assert len(sub) == 16
    assert sub[0]["task"] == "move the square down"


def test_device_batches_equal_collated_items(synth):
    """The gathered batch path (data_on_device) gives exactly the DataLoader's collated windows."""
    cfg = CotVlaConfig.tiny()
    pre = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth), preload=True), cfg)
    idx = torch.tensor([0, 14, 15, 16, 31, 5])  # starts, padded ends, clamped subgoals, both episodes
    got = pre.collate(idx)
    want = torch.utils.data.default_collate([pre[int(i)] for i in idx])
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "task":
            assert got[key] == value
        else:
            assert got[key].dtype == value.dtype, key
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    pre.to("cpu")  # the moved copy gathers the same
    torch.testing.assert_close(pre.collate(idx)[ACTION], want[ACTION])
    seen = []
    gen = pre.batches(8, torch.Generator().manual_seed(0))
    for _ in range(4):  # one epoch: every sample once, then a new permutation
        seen += next(gen)["observation.state"][:, 0].tolist()
    assert len(seen) == 32
    assert sorted(seen) == sorted(pre.states[:, 0].tolist())
    assert len(next(pre.batches(33))["task"]) == 32  # smaller than a batch: the whole set, as the loader
    with pytest.raises(ValueError, match="batch_size"):
        next(pre.batches(0))


def test_tokenizer_training_improves_psnr(synth, tmp_path):
    torch.manual_seed(0)
    cfg = TokenizerTrainConfig(
        dataset=DatasetConfig(repo_id="local/synthetic", root=str(synth)),
        tokenizer=CotVlaConfig.tiny().tokenizer,
        output_dir=str(tmp_path),
        steps=150,
        batch_size=16,
        lr=2e-3,
    )
    report = train_tokenizer(cfg)
    untrained = FSQAutoencoder(cfg.tokenizer)
    x = torch.rand(4, 3, 32, 32)
    assert report["psnr_train"] > 20, report
    assert report["psnr_heldout"] > 15, report
    assert json.loads((tmp_path / "report.json").read_text())["psnr_heldout"] == report["psnr_heldout"]
    tok = FSQAutoencoder.from_pretrained(tmp_path / "tokenizer")
    assert not torch.equal(tok.encode(x), untrained.encode(x))


def test_vla_train_run_checkpoint_and_resume(synth, tmp_path):
    out = tmp_path / "run"
    args = [
        f"--dataset.root={synth}",
        "--dataset.repo_id=local/synthetic",
        f"--output_dir={out}",
        "--optim.steps=6",
        "--optim.warmup_steps=2",
        "--save_every=3",
        "--log_every=3",
        "--tokenizer_steps=20",
        "--tensorboard=false",
        "--colour_swap=0.5",  # the augmentation runs inside the loop (tests/vla/test_colour_swap.py)
    ]
    cfg = draccus.parse(TrainConfig, config_path=str(TINY_TRAIN), args=args)
    run(cfg)
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    assert (out / "checkpoints" / "last").resolve().name == "000006"
    assert (out / "tokenizer" / "tokenizer" / "model.safetensors").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6]
    assert all(np.isfinite(x["loss"]) for x in lines)
    pol = vla.load_policy(ckpt)
    assert pol.policy.norm_stats().action_q99[0] > 0.9  # dataset statistics travelled with the checkpoint
    obs = {
        "observation.images.agentview": np.zeros((32, 32, 3), np.uint8),
        "observation.images.wrist": np.zeros((32, 32, 3), np.uint8),
        "observation.state": np.zeros(8, np.float32),
        "task": "move the square to the right",
    }
    assert pol.infer(obs)["actions"].shape == (10, 7)
    with pytest.raises(FileExistsError, match="resume"):
        run(cfg)
    cfg2 = draccus.parse(
        TrainConfig, config_path=str(TINY_TRAIN), args=[*args, "--optim.steps=9", "--resume=true"]
    )
    run(cfg2)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6, 9]
    state = json.loads((out / "checkpoints" / "last" / "training_state" / "training_state.json").read_text())
    assert state["step"] == 9
    assert state["scheduler"]["last_epoch"] == 9


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes(synth, tmp_path):
    """A wall-time limit saves the step it stopped at; --resume then runs the rest of the same schedule."""
    out = tmp_path / "run"
    args = [
        f"--dataset.root={synth}",
        "--dataset.repo_id=local/synthetic",
        "--dataset.preload=true",
        f"--output_dir={out}",
        "--optim.steps=5",
        "--optim.warmup_steps=1",
        "--save_every=100",
        "--log_every=1",
        "--tokenizer_steps=0",
        "--tensorboard=false",
        "--policy.use_cot=false",
    ]
    cut = draccus.parse(TrainConfig, config_path=str(TINY_TRAIN), args=[*args, "--max_minutes=1e-9"])
    summary = run(cut)
    assert summary["trained_steps"] == 1
    assert summary["complete"] is False
    assert (out / "checkpoints" / "last").resolve().name == "000001"
    rest = run(draccus.parse(TrainConfig, config_path=str(TINY_TRAIN), args=[*args, "--resume=true"]))
    assert rest["trained_steps"] == 5
    assert rest["complete"] is True
    state = json.loads((out / "checkpoints" / "last" / "training_state" / "training_state.json").read_text())
    assert state["step"] == 5
    assert state["scheduler"]["last_epoch"] == 5
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0)


def test_compile_trains_like_eager_and_saves_plain_checkpoints(synth, tmp_path):
    """--compile=true compiles vision and backbone in place: same losses, same checkpoint names."""
    from safetensors.torch import load_file

    def train(name: str, *extra: str) -> tuple[list[float], Path]:
        out = tmp_path / name
        args = [
            f"--dataset.root={synth}",
            "--dataset.repo_id=local/synthetic",
            "--dataset.preload=true",
            f"--output_dir={out}",
            "--optim.steps=3",
            "--optim.warmup_steps=1",
            "--log_every=1",
            "--tokenizer_steps=0",
            "--tensorboard=false",
            "--policy.use_cot=false",
            "--device=cpu",
            *extra,
        ]
        run(draccus.parse(TrainConfig, config_path=str(TINY_TRAIN), args=args))
        losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        return losses, out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"

    eager, eager_ck = train("eager")
    compiled, compiled_ck = train("compiled", "--compile=true")
    assert all(isinstance(x, float) for x in compiled)  # the device-side sums were read out as numbers
    assert compiled == pytest.approx(eager, rel=1e-3)
    a, b = load_file(eager_ck), load_file(compiled_ck)
    assert sorted(a) == sorted(b)  # no "_orig_mod." prefixes: the checkpoint loads into a plain policy
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("variant", "steps"),
    [
        ({}, 150),
        ({"use_cot": False, "action_head": "continuous"}, 300),
        pytest.param({"subgoal_decoding": "parallel"}, 200, marks=pytest.mark.slow),
    ],
    ids=["cot", "nocot-l1", "cot-parallel"],
)
def test_overfits_one_short_episode(synth, variant, steps):
    """Fit every frame of one 16-step episode; actions (and subgoal codes) must be reproduced."""
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(**variant)
    ds = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(synth), episodes=[0]), cfg)
    batch = to_policy_batch(torch.utils.data.default_collate([ds[i] for i in range(len(ds))]), cfg, "cpu")
    policy = cfg.build()
    policy.set_normalization(compute_norm_stats(ds))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, OptimConfig(lr=3e-3, warmup_steps=10, steps=steps).lr_factor
    )
    for _ in range(steps):
        loss, logs = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    policy.eval()
    _, logs = policy(batch)
    assert float(logs["action_l1"]) < 0.06, logs
    pred = policy.generate(batch)
    err = (pred["actions"] - batch[ACTION]).abs()[~batch["action_is_pad"]]
    assert err.mean() < 0.06, err.mean()
    if cfg.use_cot:
        assert float(logs["subgoal_acc"]) > 0.9, logs
        codes = policy.subgoal_codes(batch[SUBGOAL_IMAGE])
        assert (pred["codes"] == codes).float().mean() > 0.8


def _yaml_presets() -> list[Path]:
    # act_*.yaml are vla-train-act presets (lerobot's ACT peer): tests/vla/test_lerobot_act.py checks them
    train = [p for p in ROOT.glob("configs/train/*.yaml") if not p.name.startswith("act_")]
    return sorted([*ROOT.glob("configs/policy/*.yaml"), *train])


@pytest.mark.parametrize("path", _yaml_presets(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_yaml_preset_parses_and_builds(path):
    if path.parent.name == "policy":
        cfg = draccus.parse(PolicyConfig, config_path=str(path), args=[])
        policy_cfg = cfg
    elif path.name.startswith("tokenizer"):
        cfg = draccus.parse(TokenizerTrainConfig, config_path=str(path), args=[])
        FSQAutoencoder(cfg.tokenizer)
        return
    else:
        cfg = draccus.parse(TrainConfig, config_path=str(path), args=[])
        policy_cfg = cfg.policy
    torch.manual_seed(0)
    policy = policy_cfg.build()
    loss, _ = policy(policy_cfg.fake_batch(1))
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_ray_torchtrainer_two_cpu_workers(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    out = tmp_path / "ray_run"
    args = [
        f"--dataset.root={synth}",
        "--dataset.repo_id=local/synthetic",
        f"--output_dir={out}",
        "--optim.steps=4",
        "--optim.warmup_steps=1",
        "--log_every=2",
        "--tokenizer_steps=5",
        "--distributed.num_workers=2",
        "--distributed.use_gpu=false",
        "--tensorboard=false",
    ]
    import ray

    try:
        run(draccus.parse(TrainConfig, config_path=str(TINY_TRAIN), args=args))
    finally:
        ray.shutdown()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert vla.load_policy(out / "checkpoints" / "last" / "pretrained_model").metadata["chunk_size"] == 10


def test_bad_settings_give_clear_errors(synth, tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        DatasetConfig(root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="warmup_steps"):
        OptimConfig(steps=5, warmup_steps=10)
    with pytest.raises(ValueError, match=r"lacks features \['observation.images.side'\]"):
        make_dataset(
            DatasetConfig(repo_id="local/synthetic", root=str(synth)),
            CotVlaConfig.tiny(camera_keys=["observation.images.agentview", "observation.images.side"]),
        )
    from vla.training import OptimConfig as O

    sched = [O(lr=1.0, warmup_steps=4, steps=20, min_lr_ratio=0.1).lr_factor(s) for s in range(20)]
    assert sched[0] == pytest.approx(0.25)
    assert sched[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(sched[3:]))
    assert sched[-1] >= 0.1


def test_random_shift_moves_frames_together():
    from vla.training import random_shift

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    assert random_shift([x], 0)[0] is x
    a, b = random_shift([x, x.clone()], 4, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)  # a frame and its subgoal get the same shift
    assert not torch.equal(a, x)
    # each sample is a window of the replicate-padded frame: find its offset and check it exactly
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")
    offsets = set()
    for i in range(6):
        hits = [
            (r, c)
            for r in range(9)
            for c in range(9)
            if torch.equal(padded[i, :, r : r + 16, c : c + 16], a[i])
        ]
        assert hits, f"sample {i} is not a crop of its padded frame"
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between samples
    with pytest.raises(ValueError, match="batch"):
        random_shift([x, x[:2]], 2)
    with pytest.raises(ValueError, match="image_shift"):
        TrainConfig(image_shift=-1)
    with pytest.raises(ValueError, match="colour_swap"):
        TrainConfig(colour_swap=1.5)
