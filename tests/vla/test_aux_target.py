"""The auxiliary grounding target: ``target_pos`` in windows folders and batches, the head, training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch

from vla.configs import CotVlaConfig
from vla.constants import OBS_AGENTVIEW, OBS_WRIST, TARGET_POS
from vla.data import DatasetConfig, compute_norm_stats, make_dataset
from vla.normalize import TARGET_STD_FLOOR, NormStats
from vla.windows import Windows, concat_windows, load_windows, save_windows, write_target_pos

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"cot": {}, "nocot": {"use_cot": False}, "cot-parallel": {"subgoal_decoding": "parallel"}}


def _windows(seed: int = 0, lengths: tuple[int, ...] = (7, 5), target: bool = False) -> Windows:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    ep = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return Windows(
        frames={
            k: torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
            for k in (OBS_AGENTVIEW, OBS_WRIST)
        },
        actions=torch.rand(n, 7, generator=g) * 2 - 1,
        states=torch.randn(n, 8, generator=g),
        episode_index=ep,
        task_index=ep % 2,
        tasks=["put the red cube on the plate", "put the blue cube in the bin"],
        fps=20,
        target_pos=torch.rand(len(lengths), 3, generator=g)[ep] if target else None,
    )


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    return save_windows(_windows(), tmp_path_factory.mktemp("win") / "plain")


def test_windows_without_target_load_and_batch_as_before(plain_dir):
    w = load_windows(plain_dir)
    assert w.target_pos is None
    ds = make_dataset(DatasetConfig(windows=str(plain_dir)), CotVlaConfig.tiny())
    assert ds.target_pos is None
    assert TARGET_POS not in ds[0]
    assert TARGET_POS not in ds.collate(torch.arange(3))
    stats = compute_norm_stats(ds)
    assert stats.target_mean is None
    assert "target_mean" not in stats.to_dict()  # checkpoints without the target keep their old file


def test_write_target_pos_adds_the_field_atomically(plain_dir, tmp_path):
    import shutil

    d = tmp_path / "win"
    shutil.copytree(plain_dir, d)
    videos = {p.name: p.read_bytes() for p in d.glob("*.mp4")}
    w = load_windows(d)
    target = np.random.default_rng(0).uniform(-0.1, 0.1, (len(w), 3)).astype(np.float32)
    write_target_pos(d, target, note="test")
    assert {p.name: p.read_bytes() for p in d.glob("*.mp4")} == videos  # videos untouched
    assert sorted(p.name for p in d.iterdir()) == sorted([*videos, "windows.safetensors"])  # no temp left
    w2 = load_windows(d)
    np.testing.assert_array_equal(w2.target_pos.numpy(), target)
    torch.testing.assert_close(w2.actions, w.actions, atol=0, rtol=0)
    ds = make_dataset(DatasetConfig(windows=str(d)), CotVlaConfig.tiny())
    np.testing.assert_array_equal(ds[8][TARGET_POS].numpy(), target[8])
    np.testing.assert_array_equal(ds.collate(torch.tensor([2, 9]))[TARGET_POS].numpy(), target[[2, 9]])
    sub = make_dataset(DatasetConfig(windows=str(d), episodes=[1]), CotVlaConfig.tiny())
    np.testing.assert_array_equal(sub.target_pos.numpy(), target[7:])
    with pytest.raises(ValueError, match="target_pos must be float"):
        write_target_pos(d, target[:-1])
    part = target.copy()
    part[3, 1] = np.nan
    with pytest.raises(ValueError, match="partly NaN"):
        write_target_pos(d, part)
    inf = target.copy()
    inf[3] = np.inf
    with pytest.raises(ValueError, match="inf"):
        write_target_pos(d, inf)
    np.testing.assert_array_equal(load_windows(d).target_pos.numpy(), target)  # a refused write left it


def test_save_and_concat_keep_the_target(tmp_path):
    w = _windows(target=True)
    back = load_windows(save_windows(w, tmp_path / "t"))
    torch.testing.assert_close(back.target_pos, w.target_pos, atol=0, rtol=0)
    both = concat_windows([w, _windows(seed=1, target=True)])
    torch.testing.assert_close(both.target_pos[: len(w)], w.target_pos, atol=0, rtol=0)
    with pytest.raises(ValueError, match="only some have target_pos"):
        concat_windows([w, _windows(seed=1)])
    with pytest.raises(ValueError, match="target_pos must be float"):
        dataclasses.replace(w, target_pos=w.target_pos[:, :2])


def test_norm_stats_of_the_target():
    torch.manual_seed(0)
    t = np.c_[np.random.default_rng(0).normal(0.0, 0.05, (100, 2)), np.full(100, 0.82)]
    s = NormStats.from_arrays(np.zeros((100, 7)), np.zeros((100, 8)), t)
    np.testing.assert_allclose(s.target_mean, t.mean(0))
    assert s.target_std[2] == TARGET_STD_FLOOR  # a constant height is not blown up
    assert NormStats(**json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="both be given"):
        NormStats([0.0], [1.0], [0.0], [1.0], target_mean=[0.0, 0.0, 0.0])
    holes = t.copy()
    holes[::2] = np.nan  # frames without a target leave the statistics alone
    s2 = NormStats.from_arrays(np.zeros((100, 7)), np.zeros((100, 8)), holes)
    np.testing.assert_allclose(s2.target_mean, t[1::2].mean(0))
    with pytest.raises(ValueError, match="every target row is NaN"):
        NormStats.from_arrays(np.zeros((100, 7)), np.zeros((100, 8)), np.full((100, 3), np.nan))


def _batch(cfg: CotVlaConfig, seed: int = 0) -> dict:
    batch = cfg.fake_batch(3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch[TARGET_POS] = torch.rand(3, 3, generator=g) * 0.2 - 0.1
    return batch


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weight_zero_is_the_old_loss_and_weight_adds_the_aux_term(variant):
    torch.manual_seed(0)
    plain = CotVlaConfig.tiny(**VARIANTS[variant]).build()
    torch.manual_seed(0)
    aux = CotVlaConfig.tiny(aux_target_weight=0.5, **VARIANTS[variant]).build()
    assert not any("aux" in k or "target" in k for k in plain.state_dict())
    shared = plain.state_dict()
    for k, v in aux.state_dict().items():  # the head is built last: everything else is the same
        if k in shared:
            torch.testing.assert_close(v, shared[k], atol=0, rtol=0, msg=k)
    batch = _batch(plain.config)
    without = {k: v for k, v in batch.items() if k != TARGET_POS}
    torch.manual_seed(1)
    loss0, logs0 = plain(without)
    torch.manual_seed(1)
    loss0b, _ = plain(batch)  # weight 0 ignores a target that is there
    assert loss0.item() == loss0b.item()
    assert "aux_target_loss" not in logs0
    torch.manual_seed(1)
    loss1, logs1 = aux(batch)
    assert float(logs1["action_loss"]) == float(logs0["action_loss"])
    assert float(logs1["aux_target_loss"]) > 0
    torch.testing.assert_close(loss1.item(), loss0.item() + 0.5 * float(logs1["aux_target_loss"]))
    loss1.backward()
    g = aux.aux_target_head.weight.grad
    assert g is not None
    assert torch.isfinite(g).all()
    assert g.abs().sum() > 0
    assert aux.text_proj.weight.grad.abs().sum() > 0


def test_aux_loss_reads_the_prefix_token_and_normalises_by_the_stats():
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(aux_target_weight=1.0)
    policy = cfg.build().eval()
    mean, std = [0.01, -0.02, 0.82], [0.06, 0.05, TARGET_STD_FLOOR]
    policy.set_normalization(NormStats([-1.0] * 7, [1.0] * 7, [0.0] * 8, [1.0] * 8, mean, std))
    batch = _batch(cfg)
    _, logs = policy(batch)
    pred = policy.predict_target_pos(batch)  # world units, from a prefix-only pass
    m, s = torch.tensor(mean), torch.tensor(std)
    want = (((pred - m) / s - (batch[TARGET_POS] - m) / s) ** 2).mean().item()
    assert float(logs["aux_target_loss"]) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="no target head"):
        CotVlaConfig.tiny().build().predict_target_pos(batch)


def test_rows_without_a_target_are_left_out_of_the_aux_loss():
    """NaN target rows (frames after the approach, sim.targets --until_reach_cm) carry no loss."""
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(aux_target_weight=1.0)
    policy = cfg.build().eval()
    policy.set_normalization(NormStats([-1.0] * 7, [1.0] * 7, [0.0] * 8, [1.0] * 8, [0.0] * 3, [0.05] * 3))
    batch = _batch(cfg)
    per = ((policy.predict_target_pos(batch) - batch[TARGET_POS]) / 0.05).pow(2).mean(-1)
    _, logs = policy(batch)
    assert float(logs["aux_target_loss"]) == pytest.approx(per.mean().item(), rel=1e-4)
    assert float(logs["aux_target_share"]) == 1.0
    batch[TARGET_POS][0] = float("nan")
    loss, logs = policy(batch)
    assert torch.isfinite(loss)
    assert float(logs["aux_target_loss"]) == pytest.approx(per[1:].mean().item(), rel=1e-4)
    assert float(logs["aux_target_share"]) == pytest.approx(2 / 3)
    batch[TARGET_POS][:] = float("nan")
    loss, logs = policy(batch)
    assert torch.isfinite(loss)
    assert float(logs["aux_target_loss"]) == 0.0


def test_missing_target_and_bad_weight_give_clear_errors():
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(aux_target_weight=1.0)
    with pytest.raises(KeyError, match=r"sim\.targets"):
        cfg.build()(cfg.fake_batch(2))
    with pytest.raises(ValueError, match="aux_target_weight must be >= 0"):
        CotVlaConfig.tiny(aux_target_weight=-1.0)


def test_checkpoint_round_trip_keeps_head_and_stats(tmp_path):
    from vla.policy import Policy

    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(aux_target_weight=1.0, use_cot=False)
    policy = cfg.build().eval()
    stats = NormStats([-1.0] * 7, [1.0] * 7, [0.0] * 8, [1.0] * 8, [0.0, 0.01, 0.82], [0.07, 0.06, 0.01])
    policy.set_normalization(stats)
    batch = _batch(cfg)
    policy.save_pretrained(tmp_path / "ck")
    back = Policy.from_pretrained(tmp_path / "ck")
    assert back.config.aux_target_weight == 1.0
    assert back.norm_stats() == policy.norm_stats()
    torch.testing.assert_close(back.predict_target_pos(batch), policy.predict_target_pos(batch))
    torch.testing.assert_close(back.generate(batch)["actions"], policy.generate(batch)["actions"])


def _train_cfg(windows: Path, out: Path, *extra: str):
    from vla.scripts.train import TrainConfig

    return draccus.parse(
        TrainConfig,
        config_path=REPO / "configs" / "train" / "cot_vla_tiny.yaml",
        args=[
            f"--dataset.windows={windows}",
            f"--output_dir={out}",
            "--optim.steps=2",
            "--optim.warmup_steps=1",
            "--tokenizer_steps=0",
            "--num_workers=0",
            "--tensorboard=false",
            "--log_every=1",
            *extra,
        ],
    )


def test_training_passes_the_target_and_refuses_data_without_it(plain_dir, tmp_path):
    import vla
    from vla.scripts.train import run

    with pytest.raises(ValueError, match=r"needs a windows folder with target_pos.*has none"):
        run(_train_cfg(plain_dir, tmp_path / "refused", "--policy.aux_target_weight=1.0"))
    cfg = _train_cfg(plain_dir, tmp_path / "refused2", "--policy.aux_target_weight=1.0")
    cfg = dataclasses.replace(cfg, dataset=DatasetConfig(root=str(tmp_path)))
    with pytest.raises(ValueError, match="LeRobotDataset"):
        run(cfg)
    d = save_windows(_windows(target=True), tmp_path / "with_target")
    torch.manual_seed(0)
    out = tmp_path / "run"
    run(_train_cfg(d, out, "--policy.aux_target_weight=1.0"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["aux_target_loss"]) for x in lines)
    ck = out / "checkpoints" / "last" / "pretrained_model"
    stats = json.loads((ck / "normalization.json").read_text())
    w = load_windows(d)
    np.testing.assert_allclose(stats["target_mean"], w.target_pos.double().mean(0).numpy(), rtol=1e-6)
    policy = vla.load_policy(ck).policy
    assert policy.predict_target_pos(_batch(policy.config)).shape == (3, 3)
