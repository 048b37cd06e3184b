"""Policy server under load: latency and throughput for 1/4/16 simulated robots, batching on and off.

Serves a randomly initialised tiny CoT-VLA checkpoint with Ray Serve on loopback (CPU), drives it with
threads that each own a :class:`policy_server.client.PolicyClient` and send back-to-back requests, and
optionally runs a long soak at a steady request rate. Writes ``bench/results/<name>.json``.

Examples:
    python -m bench.serve --duration_s=5 --soak_s=0 --name=serve_quick       # a quick look
    nice -n 10 python -m bench.serve --soak_s=630                             # the committed results

Headline figures (issue 4): ``batching_speedup_16`` (throughput with batching / without, 16 robots;
target 3), ``p99_over_p50_4`` (latency tail with 4 robots and batching; target < 2) and
``soak_failed_requests`` (failed requests over the soak; target 0).
"""

import logging
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np

from bench.common import write_results

logger = logging.getLogger("bench.serve")


@dataclass
class ServeBenchConfig:
    """Settings of the serving benchmark.

    Args:
        robots: Concurrent simulated robots per measurement.
        duration_s: Measured seconds per (batching, robots) cell, after ``warmup_s``.
        warmup_s: Unmeasured seconds of load before each cell.
        max_batch_size: Batch size limit with batching on (off means 1).
        batch_wait_timeout_s: Batch wait with batching on.
        transports: Client transports to measure, ``ws`` (openpi-style websocket) and/or ``http``
            (POST /act); the first one gives the unsuffixed headline figures.
        reps: Interleaved repetitions per cell (batching off, on, off, on, ...); cells report medians.
        soak_s: Length of the steady-load soak (0 skips it; the issue asks for >= 600).
        soak_transport: Transport of the soak.
        soak_robots: Robots during the soak.
        soak_rate_hz: Requests per second per robot during the soak.
        ray_num_cpus: Logical CPUs given to Ray.
        torch_threads: Torch threads in the replica.
        name: Results file name (``bench/results/<name>.json``).
    """

    robots: list[int] = field(default_factory=lambda: [1, 4, 16])
    duration_s: float = 6.0
    warmup_s: float = 1.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    transports: list[str] = field(default_factory=lambda: ["ws", "http"])
    reps: int = 3
    soak_s: float = 0.0
    soak_transport: str = "http"
    soak_robots: int = 8
    soak_rate_hz: float = 5.0
    ray_num_cpus: int = 4
    torch_threads: int = 1
    name: str = "serve"

    def __post_init__(self) -> None:
        if not self.robots or min(self.robots) < 1:
            raise ValueError("robots must list positive counts, e.g. [1, 4, 16]")
        for t in [*self.transports, self.soak_transport]:
            if t not in ("http", "ws"):
                raise ValueError(f"transports must be 'http' or 'ws', got {t!r}")
        if self.reps < 1:
            raise ValueError("reps must be >= 1")
        if self.duration_s <= 0 or self.soak_s < 0 or self.soak_rate_hz <= 0:
            raise ValueError("duration_s and soak_rate_hz must be > 0, soak_s >= 0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Load:
    """Robots in threads: closed loop (back-to-back) or paced at ``rate_hz``."""

    def __init__(self, url: str, n: int, obs: list[dict[str, Any]], rate_hz: float | None = None) -> None:
        from policy_server.client import PolicyClient

        self.clients = [PolicyClient(url, timeout_s=30.0, retries=3, backoff_s=0.1) for _ in range(n)]
        self.obs = obs
        self.rate_hz = rate_hz
        self.stop = threading.Event()
        self.measuring = False
        self.lat: list[float] = []
        self.batch: list[float] = []
        self.infer_ms: list[float] = []
        self.server_ms: list[float] = []
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._robot, args=(i,), daemon=True) for i in range(n)]

    def _robot(self, i: int) -> None:
        client = self.clients[i]
        obs = self.obs[i % len(self.obs)]
        period = 1.0 / self.rate_hz if self.rate_hz else 0.0
        t_next = time.monotonic()
        while not self.stop.is_set():
            if period:
                t_next += period
                wait = t_next - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    t_next = time.monotonic()  # behind schedule: do not burst
            t0 = time.perf_counter()
            try:
                out = client.infer(obs)
                ok = out["actions"].shape[0] > 0
                err = None if ok else "empty actions"
            except Exception as e:  # counted as a failed request
                err = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            if self.measuring:
                with self.lock:
                    if err is None:
                        self.lat.append(dt)
                        self.batch.append(float(out["server_timing"].get("batch_size", 1)))
                        self.infer_ms.append(float(out["server_timing"].get("infer_ms", 0)))
                        self.server_ms.append(float(out["server_timing"].get("total_ms", 0)))
                    else:
                        self.failed.append(err)

    def run(self, warmup_s: float, duration_s: float) -> float:
        for t in self.threads:
            t.start()
        time.sleep(warmup_s)
        self.measuring = True
        t0 = time.perf_counter()
        time.sleep(duration_s)
        self.measuring = False
        elapsed = time.perf_counter() - t0
        self.stop.set()
        for t in self.threads:
            t.join(60)
        for c in self.clients:
            c.close()
        return elapsed


def _summary(load: _Load, elapsed: float) -> dict[str, Any]:
    lat = np.asarray(load.lat) * 1e3
    n = len(lat)
    row: dict[str, Any] = {
        "requests": n + len(load.failed),
        "failed": len(load.failed),
        "throughput_rps": n / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p90_ms": float(np.percentile(lat, 90)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if n else float("nan"),
        "max_ms": float(lat.max()) if n else float("nan"),
        "mean_batch_size": float(np.mean(load.batch)) if n else float("nan"),
        "server_infer_ms_mean": float(np.mean(load.infer_ms)) if n else float("nan"),
        # Time inside the replica (decode .. reply built); the rest of p50_ms is transport and proxy.
        "server_total_ms_p50": float(np.median(load.server_ms)) if n else float("nan"),
        "seconds": elapsed,
    }
    if load.failed:
        row["first_errors"] = sorted(set(load.failed))[:5]
    return row


def _measure(
    url: str,
    n: int,
    obs: list[dict[str, Any]],
    cfg: ServeBenchConfig,
    seconds: float,
    rate_hz: float | None = None,
) -> dict[str, Any]:
    load = _Load(url, n, obs, rate_hz=rate_hz)
    elapsed = load.run(cfg.warmup_s, seconds)
    row = _summary(load, elapsed)
    row["retried_attempts"] = sum(c.retried_attempts for c in load.clients)
    return row


def _pooled(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over interleaved repetitions (each cell ran as often as the other mode, turn about)."""
    out: dict[str, Any] = {"reps": len(reps)}
    for key in (
        "throughput_rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "mean_batch_size",
        "server_infer_ms_mean",
        "server_total_ms_p50",
    ):
        out[key] = float(np.median([r[key] for r in reps]))
    out["requests"] = sum(r["requests"] for r in reps)
    out["failed"] = sum(r["failed"] for r in reps)
    out["throughput_rps_per_rep"] = [round(r["throughput_rps"], 2) for r in reps]
    return out


@draccus.wrap()
def bench_serve(cfg: ServeBenchConfig) -> Path:
    """Run the benchmark and write the results file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on loopback only
    # Replicas at the benchmark's own priority (Ray's default would renice them to 15, behind every other
    # job on the machine, and measure the scheduler instead of the server); as vla-serve does.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray
    from ray import serve

    import vla
    from policy_server.app import parse_args
    from policy_server.client import PolicyClient, make_example_observation
    from policy_server.deployment import build_deployment

    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    ckpt = vla.make_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
    port = _free_port()
    load_avg_start = os.getloadavg()
    ray.init(
        include_dashboard=False,
        num_cpus=cfg.ray_num_cpus,
        logging_level="warning",
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cfg.torch_threads)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[dict[str, Any]] = []
    # Both modes are deployed side by side (one replica each) and measured turn about, so that a change
    # in the machine's background load hits both alike; each cell is the median of `reps` windows.
    modes = {"batching_off": 1, "batching_on": cfg.max_batch_size}
    try:
        for mode, mbs in modes.items():
            args = {
                "checkpoint": str(ckpt),
                "warmup_steps": 2,
                "app_name": mode,
                "deployment.torch_threads": cfg.torch_threads,
                "deployment.max_ongoing_requests": 64,
                "deployment.num_cpus": 1,
                "batching.max_batch_size": mbs,
                "batching.batch_wait_timeout_s": cfg.batch_wait_timeout_s,
            }
            serve.run(build_deployment(parse_args(args)), name=mode, route_prefix=f"/{mode}")
        md = PolicyClient(f"http://127.0.0.1:{port}/batching_on").metadata
        obs = [make_example_observation(md, seed=i) for i in range(16)]
        for transport in cfg.transports:
            scheme = "ws" if transport == "ws" else "http"
            for n in cfg.robots:
                reps: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
                for _ in range(cfg.reps):
                    for mode in modes:
                        reps[mode].append(
                            _measure(f"{scheme}://127.0.0.1:{port}/{mode}", n, obs, cfg, cfg.duration_s)
                        )
                for mode, mbs in modes.items():
                    row = {
                        "mode": mode,
                        "transport": transport,
                        "robots": n,
                        "max_batch_size": mbs,
                        **_pooled(reps[mode]),
                    }
                    logger.info("%s", row)
                    rows.append(row)
        if cfg.soak_s > 0:
            scheme = "ws" if cfg.soak_transport == "ws" else "http"
            row = {
                "mode": "soak",
                "transport": cfg.soak_transport,
                "robots": cfg.soak_robots,
                "rate_hz_per_robot": cfg.soak_rate_hz,
                "max_batch_size": cfg.max_batch_size,
                **_measure(
                    f"{scheme}://127.0.0.1:{port}/batching_on",
                    cfg.soak_robots,
                    obs,
                    cfg,
                    cfg.soak_s,
                    rate_hz=cfg.soak_rate_hz,
                ),
            }
            logger.info("%s", row)
            rows.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()

    def cell(mode: str, n: int, transport: str) -> dict[str, Any] | None:
        return next(
            (r for r in rows if r["mode"] == mode and r["robots"] == n and r["transport"] == transport), None
        )

    # The model alone, in this process: 16 single calls vs one batch of 16 (what batching can at most save
    # when transport costs nothing); puts the end-to-end speedup above in context.
    import torch

    torch.set_num_threads(cfg.torch_threads)
    policy = vla.load_policy(ckpt)
    batch16 = [dict(o) for o in obs[:16]]
    policy.infer_batch(batch16)
    single_s, batch_s = [], []
    for _ in range(cfg.reps * 3):
        t0 = time.perf_counter()
        for o in batch16:
            policy.infer(o)
        single_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        policy.infer_batch(batch16)
        batch_s.append(time.perf_counter() - t0)
    rows.append(
        {
            "mode": "model_only",
            "transport": "in_process",
            "robots": 16,
            "sixteen_single_calls_ms": float(np.median(single_s)) * 1e3,
            "one_batch_of_16_ms": float(np.median(batch_s)) * 1e3,
        }
    )

    headline: dict[str, Any] = {}
    for transport in cfg.transports:
        suffix = "" if transport == cfg.transports[0] else f"_{transport}"
        on16, off16 = cell("batching_on", 16, transport), cell("batching_off", 16, transport)
        on4 = cell("batching_on", 4, transport)
        if on16 and off16:
            headline[f"batching_speedup_16{suffix}"] = on16["throughput_rps"] / off16["throughput_rps"]
        if on4:
            headline[f"p99_over_p50_4{suffix}"] = on4["p99_ms"] / on4["p50_ms"]
    model = rows[-1]
    headline["model_only_batch_speedup_16"] = model["sixteen_single_calls_ms"] / model["one_batch_of_16_ms"]
    soak = next((r for r in rows if r["mode"] == "soak"), None)
    if soak:
        headline["soak_failed_requests"] = soak["failed"]
        headline["soak_requests"] = soak["requests"]
        headline["soak_seconds"] = soak["seconds"]
    config = {
        **asdict(cfg),
        "headline_transport": cfg.transports[0],
        "load_average_1_5_15_start": load_avg_start,
        "load_average_1_5_15_end": os.getloadavg(),
        "note": "2-core machine shared with other jobs; see load averages",
    }
    path = write_results(
        cfg.name,
        rows=rows,
        headline=headline,
        config=config,
        command="python -m bench.serve " + " ".join(sys.argv[1:]),
    )
    logger.info("headline %s -> %s", headline, path)
    return path


def main() -> None:
    """Entry point."""
    bench_serve()


if __name__ == "__main__":
    main()
