"""Configuration of the policy server: one dataclass tree for ``vla-serve``, ``serve run`` and config files.

``vla-serve --config_path=configs/serve/local.yaml --checkpoint=DIR`` (draccus) and
``serve run policy_server.app:build_app checkpoint=DIR batching.max_batch_size=8`` (Ray Serve's own CLI,
whose ``key=value`` args :func:`policy_server.app.build_app` parses with draccus) both end in
:class:`ServeConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = [
    "AutoscalingConfig",
    "BatchingConfig",
    "DeploymentConfig",
    "HttpConfig",
    "ServeConfig",
]


@dataclass
class BatchingConfig:
    """Dynamic batching across robots (``@serve.batch``); changeable at run time through ``reconfigure``.

    Args:
        max_batch_size: Most observations per model call; 1 turns batching off.
        batch_wait_timeout_s: How long the first request of a batch waits for others to join.
    """

    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(
                f"batching.max_batch_size must be >= 1 (1 = no batching), got {self.max_batch_size}"
            )
        if not 0.0 <= self.batch_wait_timeout_s <= 10.0:
            raise ValueError(
                "batching.batch_wait_timeout_s must be within [0, 10] seconds, "
                f"got {self.batch_wait_timeout_s}"
            )


@dataclass
class AutoscalingConfig:
    """Ray Serve autoscaling; when ``enabled``, replaces ``deployment.num_replicas``.

    Args:
        enabled: Scale the number of replicas with load.
        min_replicas: Lower bound.
        max_replicas: Upper bound.
        target_ongoing_requests: Requests in flight per replica that the autoscaler aims for.
    """

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0

    def __post_init__(self) -> None:
        if self.enabled and not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                "autoscaling needs 0 <= min_replicas <= max_replicas, "
                f"got {self.min_replicas}, {self.max_replicas}"
            )
        if self.target_ongoing_requests <= 0:
            raise ValueError("autoscaling.target_ongoing_requests must be > 0")


@dataclass
class DeploymentConfig:
    """Replicas, their resources and the bounded queues in front of them.

    Args:
        num_replicas: Replicas when autoscaling is off.
        num_cpus: CPUs reserved per replica (Ray logical CPUs).
        num_gpus: GPU fraction per replica, e.g. 0.5 puts two replicas on one GPU.
        max_ongoing_requests: Requests (and open websockets) one replica takes at once; more wait in
            the proxy's queue. Keep it >= ``batching.max_batch_size``.
        max_queued_requests: Requests waiting in the proxy beyond that; more get 503 (overloaded).
            -1 means no limit.
        autoscaling: Autoscaling settings.
        health_check_period_s: How often Ray checks each replica.
        torch_threads: ``torch.set_num_threads`` in each replica (0 leaves torch's default).
        model_execution: Where a batch runs: ``thread`` (a worker thread; the event loop stays responsive
            during inference), ``inline`` (in the event loop; requests that arrive meanwhile wait in
            Ray's queue and join the next batch) or ``auto``: inline while ``max_batch_size > 1``,
            else thread. Measured on a loaded 2-core CPU with the tiny policy and 16 robots: with a
            worker thread the model's Python work holds the GIL and starves the event loop that fills
            batches (mean batch 2.5, 123 req/s); inline gave mean batch 10 and 226 req/s. Without
            batching the thread wins (82 vs 46 req/s), since decoding then overlaps inference.
    """

    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    health_check_period_s: float = 5.0
    torch_threads: int = 1
    model_execution: str = "auto"

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"deployment.num_replicas must be >= 1, got {self.num_replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("deployment.num_cpus and num_gpus must be >= 0")
        if self.max_ongoing_requests < 1:
            raise ValueError("deployment.max_ongoing_requests must be >= 1")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError("deployment.max_queued_requests must be -1 (no limit) or >= 1")
        if self.model_execution not in ("auto", "inline", "thread"):
            raise ValueError(
                "deployment.model_execution must be 'auto', 'inline' or 'thread', "
                f"got {self.model_execution!r}"
            )
        if self.torch_threads < 0:
            raise ValueError("deployment.torch_threads must be >= 0")


@dataclass
class HttpConfig:
    """Where the HTTP/websocket proxy listens.

    Args:
        host: Bind address; loopback unless you mean to expose the server (then set an API key).
        port: TCP port.
        route_prefix: URL prefix of the application.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"http.port must be within [0, 65535], got {self.port}")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"http.route_prefix must start with '/', got {self.route_prefix!r}")


@dataclass
class ServeConfig:
    """Everything the policy server needs.

    Args:
        checkpoint: Checkpoint directory to serve (``config.json`` + ``model.safetensors`` + ...).
        device: Torch device of the model in each replica (``cpu``, ``cuda``).
        loader: ``module:function`` that loads the checkpoint: ``fn(path, device=...) -> policy`` with
            ``metadata``, ``infer`` and (optionally) ``infer_batch``.
        app_name: Ray Serve application name.
        api_key: Required ``Authorization: Api-Key <key>`` when set. Prefer ``api_key_env``.
        api_key_env: Environment variable read for the key when ``api_key`` is unset.
        max_body_bytes: Largest request body or websocket frame accepted (413 beyond).
        deadline_s: Default per-request deadline; a request may ask for a shorter one.
        return_subgoal_image: Send the predicted subgoal image with each reply when the policy makes one.
        warmup_steps: Model calls at start-up before the replica reports ready.
        allow_resize: Accept camera images of any size up to ``max_image_side`` (the policy resizes them).
            Off by default: an image whose size differs from the checkpoint's is refused (422), because
            a silent resize or crop on the wrong side is a classic cause of lost success rate.
        max_image_side: Largest image height or width accepted when ``allow_resize`` is on.
        batching: Dynamic batching.
        deployment: Replicas and queues.
        http: Listening address.
        ray_address: Ray cluster to join (``vla-serve`` only); None starts a local one on loopback.
        ray_num_cpus: Logical CPUs of a locally started Ray (None: the machine's count).
    """

    checkpoint: str | None = None
    device: str = "cpu"
    loader: str = "vla:load_policy"
    app_name: str = "vla_policy"
    api_key: str | None = None
    api_key_env: str = "VLA_SERVE_API_KEY"
    max_body_bytes: int = 8 * 1024 * 1024
    deadline_s: float = 5.0
    return_subgoal_image: bool = True
    warmup_steps: int = 2
    allow_resize: bool = False
    max_image_side: int = 1024
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    ray_address: str | None = None
    ray_num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not str(self.checkpoint).strip():
            raise ValueError("checkpoint must be a directory path (e.g. --checkpoint=runs/tiny/checkpoint)")
        if ":" not in self.loader:
            raise ValueError(f"loader must look like 'module:function', got {self.loader!r}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.max_image_side < 1:
            raise ValueError("max_image_side must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("api_key must be at least 8 characters (or leave it unset)")

    def resolved_api_key(self) -> str | None:
        """The key to enforce: ``api_key``, else the ``api_key_env`` variable, else None (no auth)."""
        if self.api_key:
            return self.api_key
        env = os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        return env or None

    def user_config(self) -> dict[str, float]:
        """The run-time adjustable part, passed to ``reconfigure`` (JSON-serializable for Ray)."""
        return {
            "max_batch_size": self.batching.max_batch_size,
            "batch_wait_timeout_s": self.batching.batch_wait_timeout_s,
            "deadline_s": self.deadline_s,
        }
