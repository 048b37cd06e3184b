"""The two ways to start the server, each in its own process with its own Ray: `vla-serve` and
Ray Serve's `serve run` of a config file with `import_path`. Slow (two Ray start-ups)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from policy_server.client import PolicyClient, make_example_observation

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import vla

    return vla.make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny", seed=0)


def _env():
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "OMP_NUM_THREADS": "1",
        "VLA_SERVE_API_KEY": "cli-key-123456",
    }


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"server at {url} not ready after {timeout}s")


def _stop(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"server did not stop on signal {sig}:\n{out[-3000:]}") from None
    return out


def _exercise(url: str) -> None:
    client = PolicyClient(url, api_key="cli-key-123456", timeout_s=30)
    out = client.infer(make_example_observation(client.metadata))
    assert out["actions"].shape == (10, 7)
    assert requests.get(f"{url}/metadata", timeout=10).status_code == 401  # key from VLA_SERVE_API_KEY


def test_vla_serve_cli(checkpoint):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "policy_server.scripts.serve",
        "--config_path=configs/serve/local.yaml",
        f"--checkpoint={checkpoint}",
        f"--http.port={port}",
        "--ray_num_cpus=2",
        "--warmup_steps=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        _exercise(f"http://127.0.0.1:{port}")
    finally:
        out = _stop(proc, signal.SIGINT) if proc.poll() is None else ""
    assert proc.returncode == 0, out[-3000:]


def test_serve_run_config_file_with_import_path(checkpoint, tmp_path):
    port = _free_port()
    raw = yaml.safe_load((ROOT / "configs/serve/ray_serve.yaml").read_text())
    raw["http_options"]["port"] = port
    raw["applications"][0]["route_prefix"] = "/policy"
    raw["applications"][0]["args"].update(checkpoint=str(checkpoint), warmup_steps=1)
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    serve_bin = Path(sys.executable).with_name("serve")
    proc = subprocess.Popen(
        [str(serve_bin), "run", str(cfg_file)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/policy", proc)
        _exercise(f"http://127.0.0.1:{port}/policy")
        ws = PolicyClient(f"ws://127.0.0.1:{port}/policy", api_key="cli-key-123456", timeout_s=30)
        assert ws.infer(make_example_observation(ws.metadata))["actions"].shape == (10, 7)
        ws.close()
    finally:
        if proc.poll() is None:
            _stop(proc, signal.SIGINT)
