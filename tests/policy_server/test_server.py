"""End to end on loopback: one Ray Serve instance (tiny random checkpoint) shared by the tests here.

Covers HTTP and websocket round trips against the in-process policy, openpi's own client, every bad
input getting its 4xx (and the next good request succeeding), deadlines, batching with run-time
reconfiguration, and a replica killed mid-run being replaced while the client's retries carry on.
The replica-kill test runs last because it replaces the replica the others use.
"""

import os
import socket
import threading
import time
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import requests

from policy_server import protocol
from policy_server.client import PolicyClient, make_example_observation

KEY = "test-key-0123456789"
MAX_BODY = 64 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds loopback only
    ray = pytest.importorskip("ray")
    from ray import serve

    import vla
    from policy_server.app import build_app, parse_args
    from policy_server.deployment import build_deployment

    ckpt = vla.make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)
    port = _free_port()
    ray.init(
        include_dashboard=False,
        num_cpus=4,
        logging_level="warning",
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "checkpoint": str(ckpt),
        "api_key": KEY,
        "max_body_bytes": MAX_BODY,
        "warmup_steps": 1,
        "batching.max_batch_size": 8,
        "batching.batch_wait_timeout_s": 0.005,
        "deployment.num_cpus": 0.5,
        "deployment.health_check_period_s": 1.0,
    }
    serve.run(build_app(args), name="policy_test", route_prefix="/")
    local = vla.load_policy(ckpt)

    def redeploy(user_config=None, **overrides):
        cfg = parse_args({**args, **overrides})
        serve.run(build_deployment(cfg, user_config), name="policy_test", route_prefix="/")

    try:
        yield SimpleNamespace(
            http=f"http://127.0.0.1:{port}",
            ws=f"ws://127.0.0.1:{port}",
            port=port,
            local=local,
            redeploy=redeploy,
            serve=serve,
            ray=ray,
        )
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    c = PolicyClient(server.http, api_key=KEY, timeout_s=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def obs(client):
    return make_example_observation(client.metadata, seed=1, task="put the red cube on the plate")


def _auth(key=KEY):
    return {"Authorization": f"Api-Key {key}"}


def _post(server, body, headers=None):
    h = {"Content-Type": protocol.CONTENT_TYPE, **_auth(), **(headers or {})}
    return requests.post(f"{server.http}/act", data=body, headers=h, timeout=30)


def test_health_ready_metadata_and_openapi(server, client):
    assert requests.get(f"{server.http}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{server.http}/readyz", timeout=10).json()
    assert ready["ready"] is True
    assert ready["model_id"] == "cot_vla_tiny"
    assert ready["warmup_ms"] > 0
    r = requests.get(f"{server.http}/metadata", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    md = client.metadata
    assert md["protocol_version"] == protocol.PROTOCOL_VERSION
    assert md["chunk_size"] == 10
    assert md["n_action_steps"] == 10
    assert md["control_hz"] == 20
    assert md["image_shapes"] == {
        "observation.images.agentview": [32, 32, 3],
        "observation.images.wrist": [32, 32, 3],
    }
    assert md["state_dim"] == 8
    assert md["action_low"] == [-1.0] * 7
    assert md["api_key_required"] is True
    schema = requests.get(f"{server.http}/openapi.json", timeout=10).json()
    act = schema["paths"]["/act"]["post"]
    assert protocol.CONTENT_TYPE in act["requestBody"]["content"]
    assert "422" in act["responses"]
    assert "MetadataResponse" in schema["components"]["schemas"]


def _check_reply(out, server, obs, sent_ts=None):
    want = server.local.infer(obs)
    assert out["actions"].dtype == np.float32
    assert out["actions"].shape == (10, 7)
    np.testing.assert_array_equal(out["actions"], want["actions"])  # same numbers as the local policy
    assert out["subgoal_image"].dtype == np.uint8
    assert out["subgoal_image"].shape == (32, 32, 3)
    assert np.abs(out["subgoal_image"].astype(int) - want["subgoal_image"]).max() <= 1
    t = out["server_timing"]
    assert {"decode_ms", "validate_ms", "queue_ms", "infer_ms", "total_ms", "batch_size"} <= set(t)
    assert t["total_ms"] >= t["infer_ms"] > 0
    if sent_ts is not None:
        assert out["timestamp"] == sent_ts
    assert out["model_id"] == "cot_vla_tiny"


def test_http_end_to_end(server, client, obs):
    out = client.infer({**obs, "timestamp": 1234.5})
    _check_reply(out, server, obs, sent_ts=1234.5)
    assert len(out["request_id"]) == 32


def test_websocket_end_to_end(server, obs):
    with PolicyClient(server.ws, api_key=KEY, timeout_s=30) as ws:
        assert ws.metadata["chunk_size"] == 10
        for ts in (1.0, 2.0):
            _check_reply(ws.infer({**obs, "timestamp": ts}), server, obs, sent_ts=ts)


def test_openpi_client_drives_the_server(server, obs):
    wcp = pytest.importorskip("openpi_client.websocket_client_policy")
    policy = wcp.WebsocketClientPolicy("127.0.0.1", server.port, api_key=KEY)
    assert policy.get_server_metadata()["chunk_size"] == 10
    openpi_obs = {
        "observation/image": obs["observation.images.agentview"],
        "observation/wrist_image": obs["observation.images.wrist"],
        "observation/state": obs["observation.state"].astype(np.float64),
        "prompt": obs["task"],
    }
    out = policy.infer(openpi_obs)
    np.testing.assert_array_equal(out["actions"], server.local.infer(obs)["actions"])
    assert "infer_ms" in out["server_timing"]
    bad = {**openpi_obs, "observation/state": np.full(8, np.nan)}
    with pytest.raises(RuntimeError, match=r"invalid_observation.*non-finite"):
        policy.infer(bad)
    assert policy.infer(openpi_obs)["actions"].shape == (10, 7)  # same connection still works
    with pytest.raises(Exception, match="403"):
        wcp.WebsocketClientPolicy("127.0.0.1", server.port, api_key="wrong-key-000")


def _bad_bodies(obs):
    def mut(**kw):
        o = dict(obs)
        for k, v in kw.items():
            if v is None:
                o.pop(k.replace("__", "."))
            else:
                o[k.replace("__", ".")] = v
        return protocol.packb(o)

    good = protocol.packb(obs)
    big = dict(obs, padding=np.zeros(MAX_BODY + 1, np.uint8))
    bad_header = msgpack.packb(
        {"task": {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}}
    )
    return [
        (
            "wrong-shape",
            mut(observation__images__agentview=np.zeros((16, 16, 3), np.uint8)),
            422,
            "invalid_observation",
            "expects (32, 32, 3)",
        ),
        (
            "wrong-dtype",
            mut(observation__images__wrist=np.zeros((32, 32, 3), np.float32)),
            422,
            "invalid_observation",
            "must be uint8",
        ),
        (
            "nan",
            mut(observation__state=np.full(8, np.nan, np.float32)),
            422,
            "invalid_observation",
            "non-finite",
        ),
        ("missing-key", mut(task=None), 422, "invalid_observation", "missing ['task']"),
        ("truncated-msgpack", good[: len(good) // 2], 400, "bad_request", "truncated"),
        ("not-msgpack", b"\xc1\xc1\xc1", 400, "bad_request", "not a valid msgpack"),
        ("object-array", bad_header, 400, "bad_request", "not accepted"),
        ("oversized-body", protocol.packb(big), 413, "payload_too_large", "exceeds the limit"),
    ]


@pytest.mark.parametrize(
    "case",
    range(8),
    ids=[
        "wrong-shape",
        "wrong-dtype",
        "nan",
        "missing-key",
        "truncated-msgpack",
        "not-msgpack",
        "object-array",
        "oversized-body",
    ],
)
def test_bad_input_gets_its_4xx_then_good_request_succeeds(server, client, obs, case):
    name, body, status, code, message = _bad_bodies(obs)[case]
    r = _post(server, body)
    assert r.status_code == status, (name, r.text)
    err = r.json()["error"]
    assert err["code"] == code, err
    assert message in err["message"], err
    assert client.infer(obs)["actions"].shape == (10, 7)


@pytest.mark.parametrize(
    ("headers", "client_key"),
    [
        ({"Authorization": ""}, None),
        (_auth("wrong-key-0000"), "wrong-key-0000"),
        ({"Authorization": f"Bearer {KEY}"}, ""),
    ],
    ids=["missing-key", "wrong-key", "wrong-scheme"],
)
def test_api_key_required(server, client, obs, headers, client_key):
    h = {"Content-Type": protocol.CONTENT_TYPE, **headers}
    r = requests.post(f"{server.http}/act", data=protocol.packb(obs), headers=h, timeout=30)
    assert r.status_code == 401
    assert "Api-Key" in r.json()["error"]["message"]
    if client_key != "":
        with pytest.raises(protocol.UnauthorizedError):
            PolicyClient(server.http, api_key=client_key).infer(obs)
    assert client.infer(obs)["actions"].shape == (10, 7)


def test_websocket_rejects_bad_key_and_survives_bad_input(server, obs):
    for key in (None, "wrong-key-0000"):
        with pytest.raises(protocol.UnauthorizedError):
            PolicyClient(server.ws, api_key=key, retries=0).infer(obs)
    with PolicyClient(server.ws, api_key=KEY, timeout_s=30) as ws:
        with pytest.raises(protocol.InvalidObservationError, match="channels first"):
            ws.infer({**obs, "observation.images.wrist": np.zeros((3, 32, 32), np.uint8)})
        conn = ws._ws
        assert ws.infer(obs)["actions"].shape == (10, 7)
        assert ws._ws is conn  # a 4xx does not cost the connection


def test_wrong_protocol_version_is_refused(server, obs):
    r = _post(server, protocol.packb(obs), headers={protocol.VERSION_HEADER: "99"})
    assert r.status_code == 400
    assert "speaks 1" in r.json()["error"]["message"]


@pytest.mark.sim
@pytest.mark.parametrize(("scheme", "workers"), [("http", 2), ("ws", 1)])
def test_run_eval_through_the_server(server, tmp_path, monkeypatch, scheme, workers):
    """`sim.run_eval --policy http://… | ws://…` evaluates through the server, several Ray workers at once."""
    pytest.importorskip("robosuite")
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig
    from sim.run_eval import evaluate

    url = getattr(server, scheme)
    monkeypatch.setenv("VLA_SERVE_API_KEY", KEY)  # forwarded to the Ray workers, never written to results
    cfg = EvalConfig(
        suite="robosuite_stock",
        tasks=["lift"],
        episodes=2,
        policy=url,
        num_workers=workers,
        max_steps=6,
        out_dir=str(tmp_path / "eval"),
        render=RenderConfig(image_size=64),
    )
    res = evaluate(cfg)
    assert res["policy_id"] == server.local.metadata["model_id"]
    assert res["policy_metadata"]["chunk_size"] == server.local.metadata["chunk_size"]
    assert [e["init_state"] for e in res["episodes"]] == [0, 1]
    # The cameras render at the size the server announces (64 was asked; the tiny checkpoint wants 32).
    assert res["protocol"]["render"]["image_size"] == server.local.metadata["image_size"][0] != 64
    assert all(e["steps"] == 6 and not e["success"] for e in res["episodes"])
    assert KEY not in (tmp_path / "eval" / "results.json").read_text()
    assert KEY not in (tmp_path / "eval" / "config.yaml").read_text()


def test_run_eval_without_the_key_is_refused(server, obs, monkeypatch):
    from policy_server.protocol import UnauthorizedError
    from sim.policies import make_policy

    monkeypatch.delenv("VLA_SERVE_API_KEY", raising=False)
    policy = make_policy(server.http)
    with pytest.raises(UnauthorizedError):
        policy.infer(obs)


def test_per_request_deadline(server, client, obs):
    r = _post(server, protocol.packb({**obs, "deadline_s": 1e-5, "request_id": "late-1"}))
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "deadline_exceeded"
    assert err["request_id"] == "late-1"
    assert client.infer(obs)["actions"].shape == (10, 7)


def test_broker_over_the_server(server, obs):
    from policy_server.broker import ActionChunkBroker

    with PolicyClient(server.http, api_key=KEY, timeout_s=30) as c:
        broker = ActionChunkBroker(c, prefetch_steps=0, blend_steps=0, max_wait_s=None)
        assert broker.n_action_steps == 10  # read from the server's metadata
        acts = np.stack([broker.step(obs) for _ in range(12)])
        broker.close()
    want = server.local.infer(obs)["actions"]
    np.testing.assert_array_equal(acts[:10], want)
    np.testing.assert_array_equal(acts[10:], want[:2])  # same obs, fresh chunk
    assert broker.stats.fetches == 2
    assert broker.stats.holds == 0


def test_batching_across_robots_and_reconfigure(server, obs):
    # New run-time settings through user_config -> reconfigure(). From Python, serve.run starts a fresh
    # replica (Serve versions code itself); `serve deploy` of a config file applies it in place. The
    # new settings stay for the rest of this module.
    server.redeploy({"max_batch_size": 4, "batch_wait_timeout_s": 0.25})
    md = requests.get(f"{server.http}/metadata", headers=_auth(), timeout=10).json()
    assert md["max_batch_size"] == 4
    sizes, errors = [], []

    def robot(i):
        try:
            with PolicyClient(server.http, api_key=KEY, timeout_s=30) as c:
                out = c.infer(make_example_observation(md, seed=i))
                np.testing.assert_array_equal(
                    out["actions"], server.local.infer(make_example_observation(md, seed=i))["actions"]
                )
                sizes.append(int(out["server_timing"]["batch_size"]))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(sizes) == 8
    assert 1 < max(sizes) <= 4, sizes


def test_bounded_queue_sheds_load_with_503(server, obs):
    server.redeploy(
        **{
            "deployment.max_ongoing_requests": 1,
            "deployment.max_queued_requests": 1,
            "batching.max_batch_size": 1,
        }
    )
    body = protocol.packb(obs)
    statuses = []

    def robot():
        statuses.append(_post(server, body).status_code)

    threads = [threading.Thread(target=robot) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1, statuses  # rejected at once instead of queueing without bound
    assert statuses.count(200) >= 1, statuses
    with pytest.raises(protocol.OverloadedError):
        raise protocol.error_from_payload("Request dropped due to backpressure", 503)
    with PolicyClient(server.http, api_key=KEY, timeout_s=30, retries=5) as c:
        assert c.infer(obs)["actions"].shape == (10, 7)


def test_replica_killed_mid_run_is_replaced(server, obs):
    ray = server.ray
    names = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::policy_test#")
    ]
    assert len(names) == 1, names
    before = requests.get(f"{server.http}/readyz", timeout=10).json()["replica"]
    results, errors = [], []
    stop = threading.Event()

    def robot():
        with PolicyClient(
            server.http, api_key=KEY, timeout_s=10, retries=30, backoff_s=0.1, max_backoff_s=1.0
        ) as c:
            while not stop.is_set():
                try:
                    results.append(c.infer(obs)["actions"])
                except Exception as e:  # counted below: a request that failed after all retries
                    errors.append(e)

    th = threading.Thread(target=robot)
    th.start()
    try:
        t0 = time.monotonic()
        while len(results) < 3 and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        n_before_kill = len(results)
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
        while len(results) < n_before_kill + 3 and time.monotonic() - t0 < 120:
            time.sleep(0.1)
    finally:
        stop.set()
        th.join(60)
    assert not errors, errors
    assert len(results) >= n_before_kill + 3
    after = requests.get(f"{server.http}/readyz", timeout=10).json()
    assert after["ready"]
    assert after["replica"] != before
    want = server.local.infer(obs)["actions"]
    np.testing.assert_array_equal(results[-1], want)
