"""Config parsing shared by vla-serve and `serve run`, presets, and the websocket prefix shim (no Ray)."""

import asyncio
from pathlib import Path

import draccus
import pytest
import yaml

from policy_server.app import parse_args
from policy_server.configs import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
ALL_YAML = sorted(ROOT.glob("configs/serve/*.yaml"))
# Ray Serve config files (top-level `applications`) hold our args; the rest are ServeConfig presets.
RAY_FILES = [p for p in ALL_YAML if "applications" in yaml.safe_load(p.read_text())]
PRESETS = [p for p in ALL_YAML if p not in RAY_FILES]


def test_presets_exist():
    assert {p.name for p in PRESETS} >= {"local.yaml", "gpu.yaml"}
    assert {p.name for p in RAY_FILES} == {"ray_serve.yaml"}


@pytest.mark.parametrize("path", RAY_FILES, ids=lambda p: p.name)
def test_ray_serve_config_file_args_parse(path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # Ray's own schema of the file
    monkeypatch.chdir(ROOT)  # config_path is relative to the repository, where `serve run` is started
    for app in raw["applications"]:
        assert app["import_path"] == "policy_server.app:build_app"
        cfg = parse_args(app["args"])
        assert cfg.checkpoint
        assert cfg.http.host == "127.0.0.1"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_parses_through_both_entry_points(path):
    cli = draccus.parse(ServeConfig, config_path=str(path), args=["--checkpoint=ckpt"])
    serve_run = parse_args({"config_path": str(path), "checkpoint": "ckpt"})
    assert cli == serve_run
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():  # every key written in the YAML reaches the config
        got = getattr(cli, key)
        if isinstance(value, dict):
            for sub, v in value.items():
                if not isinstance(v, dict):
                    assert getattr(got, sub) == v, f"{path.name}: {key}.{sub}"
        else:
            assert got == value, f"{path.name}: {key}"
    assert cli.http.host == "127.0.0.1"  # loopback unless told otherwise


def test_serve_run_args_override_and_types():
    cfg = parse_args(
        {"checkpoint": "c", "batching.max_batch_size": "4", "deployment.num_gpus": 0.5, "allow_resize": True}
    )
    assert cfg.batching.max_batch_size == 4
    assert cfg.deployment.num_gpus == 0.5
    assert cfg.allow_resize is True
    assert cfg.user_config() == {"max_batch_size": 4, "batch_wait_timeout_s": 0.005, "deadline_s": 5.0}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"batching.max_batch_size": "0"}, "max_batch_size must be >= 1"),
        ({"http.port": "70000"}, "http.port"),
        ({"deadline_s": "0"}, "deadline_s must be > 0"),
        ({"api_key": "short"}, "at least 8 characters"),
        ({"loader": "no_colon"}, "module:function"),
        ({"chekpoint": "typo"}, "unrecognized arguments"),
        (
            {"deployment.autoscaling.enabled": "true", "deployment.autoscaling.min_replicas": "5"},
            "min_replicas",
        ),
    ],
)
def test_bad_args_say_what_to_fix(args, match):
    with pytest.raises(ValueError, match=match):
        parse_args({"checkpoint": "c", **args})


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("VLA_SERVE_API_KEY", "from-env-key-123")
    assert ServeConfig(checkpoint="c").resolved_api_key() == "from-env-key-123"
    assert ServeConfig(checkpoint="c", api_key="explicit-key-1").resolved_api_key() == "explicit-key-1"
    monkeypatch.delenv("VLA_SERVE_API_KEY")
    assert ServeConfig(checkpoint="c").resolved_api_key() is None


def test_websocket_at_bare_route_prefix_reaches_root_route():
    from policy_server.deployment import _WebsocketAtPrefixRoot

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    shim = _WebsocketAtPrefixRoot(app)
    for scope in (
        {"type": "websocket", "path": "/pre", "root_path": "/pre"},
        {"type": "websocket", "path": "/pre/ws", "root_path": "/pre"},
        {"type": "websocket", "path": "/", "root_path": ""},
        {"type": "http", "path": "/pre", "root_path": "/pre"},
    ):
        asyncio.run(shim(scope, None, None))
    assert seen == ["/pre/", "/pre/ws", "/", "/pre"]
