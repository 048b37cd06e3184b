"""The device bundle's trimmed robosuite (``scripts/device/make_bundle.py``) runs every embedded_goal task.

A build-artefact check: it skips when ``.devbundle/`` has not been built. The archive is unpacked into a
temp folder that goes first on ``PYTHONPATH`` of a subprocess, which asserts robosuite comes from there
(not from the venv's full copy) and runs one rendered expert episode per task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / ".devbundle"
ARCHIVE = BUNDLE / "robosuite.tar.xz"

CHECK = """
import json, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import robosuite
assert Path(robosuite.__file__).resolve().is_relative_to(site), robosuite.__file__
from sim.configs import RenderConfig
from sim.policies import ChunkExecutor, make_policy
from sim.run_eval import package_versions, run_episode
from sim.suites import get_suite, make_env
out = {"robosuite_file": robosuite.__file__, "versions": package_versions(), "episodes": {}}
for task in get_suite("embedded_goal").tasks:
    env = make_env("embedded_goal", task.name, render=RenderConfig(image_size=64))
    obs, _ = env.reset(seed=0, options={"init_state": 0})
    img_std = float(obs["observation.images.agentview"].std())
    ep = run_episode(env, ChunkExecutor(make_policy("expert", env)), 0, seed=0)
    out["episodes"][task.name] = {"success": ep.success, "steps": ep.steps, "img_std": img_std}
    env.close()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def bundle_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not built (run scripts/device/make_bundle.py)")
    site = tmp_path_factory.mktemp("devbundle_site")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(site, filter="data")
    return site


@pytest.mark.slow  # needs the built bundle (a ~2 min build): deselected by default rather than skipped
def test_bundle_manifest_lists_what_the_archive_holds(bundle_site: Path) -> None:
    manifest = json.loads((BUNDLE / "MANIFEST.json").read_text())
    assert "embedded_goal" in manifest["suites"]
    for rel in manifest["robosuite_assets"]:
        assert (bundle_site / "robosuite" / rel).is_file(), rel
    # Trimmed: the other robots' meshes are gone.
    assert not (bundle_site / "robosuite/models/assets/robots/sawyer").exists()
    assert list(bundle_site.glob("robosuite-*.dist-info/METADATA"))


def _run_in_site(code: str, site: Path, **env: str) -> dict:
    """Run ``code`` in a subprocess with ``site`` first on PYTHONPATH; return its ``RESULT`` JSON line."""
    res = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        env=dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
@pytest.mark.sim
def test_trimmed_robosuite_runs_every_embedded_goal_task(bundle_site: Path) -> None:
    out = _run_in_site(CHECK, bundle_site)
    assert out["versions"]["robosuite"] == "1.4.0"  # the dist-info travelled with the package
    assert len(out["episodes"]) == 9
    assert all(e["img_std"] > 5 for e in out["episodes"].values()), out["episodes"]  # rendered, textured
    failed = {t: e for t, e in out["episodes"].items() if not e["success"]}
    assert not failed, f"expert failed with the trimmed robosuite: {failed}"


LIBERO_BUNDLE = REPO / ".devbundle_libero"

LIBERO_CHECK = """
import json, os, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import robosuite
from sim.envs.libero import _benchmark
_benchmark("libero_object")  # what building a suite does first: LIBERO's config, then the asset link
import libero.libero as L
assert Path(robosuite.__file__).resolve().is_relative_to(site), robosuite.__file__
assert Path(L.__file__).resolve().is_relative_to(site), L.__file__
from sim.configs import RenderConfig
from sim.policies import ChunkExecutor, make_policy
from sim.run_eval import run_episode
from sim.suites import get_suite, make_env
out = {"assets": os.path.realpath(L.get_libero_path("assets")), "tasks": {}}
for i, task in enumerate(get_suite("libero_object").tasks):
    env = make_env("libero_object", task.name, render=RenderConfig(image_size=64))
    obs, _ = env.reset(seed=0, options={"init_state": 0})
    rec = {"img_std": float(obs["observation.images.agentview"].std())}
    if i == 0:
        rec["success"] = run_episode(env, ChunkExecutor(make_policy("expert", env)), 0, seed=0).success
    out["tasks"][task.name] = rec
    env.close()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow  # needs both built bundles (make_bundle.py --libero_suites libero_object)
@pytest.mark.sim
def test_libero_bundle_runs_libero_object_from_the_trimmed_trees(tmp_path: Path) -> None:
    if not (ARCHIVE.is_file() and (LIBERO_BUNDLE / "MANIFEST.json").is_file()):
        pytest.skip("bundles not built (run scripts/device/make_bundle.py --libero_suites libero_object)")
    site = tmp_path / "site"
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(site, filter="data")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site)]
        + [str(w) for w in sorted((LIBERO_BUNDLE / "whl").glob("*.whl"))],
        check=True,
    )
    with tarfile.open(LIBERO_BUNDLE / "libero_assets.tar.xz") as tar:
        tar.extractall(site, filter="data")
    manifest = json.loads((LIBERO_BUNDLE / "MANIFEST.json").read_text())
    assert all((site / "libero_assets" / f).is_file() for f in manifest["libero_assets"])
    # trimmed: the ten scenes' files (and setup's check entries), not the 585-file tree
    assert sum(f.is_file() for f in (site / "libero_assets").rglob("*")) < 60
    out = _run_in_site(
        LIBERO_CHECK,
        site,
        VLA_LIBERO_ASSETS=str(site / "libero_assets"),  # what setup_env.sh exports
        LIBERO_CONFIG_PATH=str(tmp_path / "libero_config"),
    )
    assert Path(out["assets"]) == (site / "libero_assets").resolve()  # not the venv's full tree
    assert len(out["tasks"]) == 10
    assert all(t["img_std"] > 5 for t in out["tasks"].values()), out["tasks"]
    assert next(iter(out["tasks"].values()))["success"]


def _eval_shards():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_shards", REPO / "scripts/device/eval_shards.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_shards", mod)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["eval_shards"])
    return sys.modules["eval_shards"]


def test_shard_ranges_and_policy_names() -> None:
    es = _eval_shards()
    assert es.split_range(0, 50, 4) == [(0, 13), (13, 13), (26, 12), (38, 12)]
    assert es.split_range(5, 2, 9) == [(5, 1), (6, 1)]
    assert es.parse_policies(["expert=expert", "/tmp/ckpt_a/"]) == {
        "expert": "expert",
        "ckpt_a": "/tmp/ckpt_a/",
    }
    with pytest.raises(SystemExit, match="twice"):
        es.parse_policies(["a=expert", "a=random"])


def test_policy_device_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import vla.inference
    from sim.policies import make_policy

    seen = {}
    monkeypatch.setattr(vla.inference, "load_policy", lambda path, device="cpu": seen.setdefault("d", device))
    make_policy(str(tmp_path))
    assert seen.pop("d") == "cpu"
    monkeypatch.setenv("VLA_POLICY_DEVICE", "cuda:1")
    make_policy(str(tmp_path))
    assert seen["d"] == "cuda:1"


@pytest.mark.sim
def test_eval_shards_merges_parts_into_run_eval_results(tmp_path: Path) -> None:
    out = tmp_path / "evals"
    cmd = [
        sys.executable, str(REPO / "scripts/device/eval_shards.py"), "--policy", "rnd=random",
        "--tasks", "put_red_cube_on_plate", "--episodes", "3", "--parts", "2", "--jobs", "2",
        "--out_dir", str(out), "--export_dir", str(tmp_path / "export"),
        "--", "--max_steps=3", "--render.enabled=false",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((tmp_path / "export" / "rnd.json").read_text())
    assert doc["complete"]
    assert not doc["missing"]
    assert [e["init_state"] for e in doc["episodes"]] == [0, 1, 2]
    assert doc["tasks"]["put_red_cube_on_plate"]["episodes"] == 3
    assert doc["protocol"]["init_states"] == [0, 2]
    assert {"mean_success", "overall_ci95", "versions", "policy_id"} <= set(doc)
    assert len(doc["shards"]) == 2
    assert json.loads((tmp_path / "export" / "summary.json").read_text())["episodes"] == 3
