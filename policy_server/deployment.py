"""Ray Serve deployment of a policy: FastAPI ingress with HTTP and an openpi-compatible websocket.

Endpoints (under the application's route prefix):

* ``POST /act``: msgpack-numpy observation in, msgpack-numpy reply out: ``actions`` float32
  `(chunk, A)` clipped to the declared range, ``server_timing`` (ms per stage), ``request_id`` and
  ``timestamp`` echoed, ``subgoal_image`` uint8 when the policy predicts one.
* ``GET /healthz``: liveness (the replica process answers). ``GET /readyz``: readiness (model loaded
  and warmed up), 503 otherwise. ``GET /metadata``: the checkpoint's inference contract.
* websocket ``/`` (and ``/ws``): openpi's protocol: the metadata frame first, then msgpack-numpy
  observation -> action dict per message; errors come back as a text frame (JSON) and the connection
  stays open. openpi's LIBERO keys are mapped to ours.

Every request is authenticated (when a key is configured), size-checked, decoded and validated before it
is queued for the model; typed errors become JSON bodies with their status code. Observations from all
connections are batched (``@serve.batch``) into one ``policy.infer_batch`` call, run inline or in a
worker thread as ``deployment.model_execution`` says.
"""

import asyncio
import hmac
import importlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from policy_server import protocol
from policy_server.configs import ServeConfig
from policy_server.protocol import (
    DeadlineExceededError,
    InternalServerError,
    NotReadyError,
    PayloadTooLargeError,
    PolicyServerError,
    UnauthorizedError,
)
from policy_server.validation import ObservationSpec, postprocess_actions, validate_observation

__all__ = ["PolicyDeployment", "build_deployment", "fastapi_app"]

logger = logging.getLogger("ray.serve")


# ------------------------------------------------------------------------------------------------
# JSON schemas of the JSON endpoints (FastAPI publishes them at /openapi.json and /docs).
# ------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """One error."""

    code: str = Field(description="Stable error code, e.g. invalid_observation, unauthorized.")
    status: int = Field(description="HTTP status.")
    message: str = Field(description="What went wrong and how to fix it.")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Body of every non-2xx reply."""

    error: ErrorBody


class HealthResponse(BaseModel):
    """Liveness."""

    status: str = "ok"


class ReadyResponse(BaseModel):
    """Readiness: true once the model is loaded and warmed up."""

    ready: bool
    model_id: str | None = None
    warmup_ms: float | None = None
    replica: str | None = Field(default=None, description="Id of the replica that answered.")


class MetadataResponse(BaseModel, extra="allow"):
    """The checkpoint's inference contract plus server settings (further policy fields are passed through)."""

    protocol_version: int
    model_id: str | None = None
    chunk_size: int
    n_action_steps: int | None = None
    control_hz: float | None = None
    image_shapes: dict[str, list[int]] = Field(description="camera key -> [H, W, 3] uint8 image shape")
    state_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    max_batch_size: int
    deadline_s: float
    max_body_bytes: int
    api_key_required: bool
    openpi_key_map: dict[str, str]


_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 413, 422, 500, 503, 504)}
_ACT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "msgpack-numpy map: observation.images.* (HxWx3 uint8), observation.state "
        "(float32), task (str); optional request_id, timestamp, deadline_s.",
        "content": {protocol.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    "responses": {
        "200": {
            "description": "msgpack-numpy map: actions float32 (chunk, A), server_timing {stage: ms}, "
            "request_id, timestamp, model_id, protocol_version, actions_clipped, optional subgoal_image.",
            "content": {protocol.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
}

fastapi_app = FastAPI(
    title="VLA policy server",
    description="Serves a VLA checkpoint: msgpack-numpy over HTTP and openpi's websocket protocol.",
    version=str(protocol.PROTOCOL_VERSION),
)


class _WebsocketAtPrefixRoot:
    """Route a websocket opened at the bare route prefix (``ws://host/prefix``) to the ``/`` endpoint.

    Under a route prefix the path left for routing is empty, which matches no route, and Starlette
    refuses the handshake (HTTP 403). openpi's client connects exactly there, so add the slash.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            root = scope.get("root_path", "")
            if root and scope.get("path") == root:
                scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


fastapi_app.add_middleware(_WebsocketAtPrefixRoot)


def _error_response(err: PolicyServerError) -> JSONResponse:
    return JSONResponse(err.to_payload(), status_code=err.status)


def _json_text(err: PolicyServerError) -> str:
    return json.dumps(err.to_payload())


def _import_loader(path: str) -> Any:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import loader {path!r}: {e}") from e


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


@dataclass
class _Item:
    obs: dict[str, Any]
    deadline: float  # time.monotonic() after which the result is useless


@serve.deployment(name="PolicyDeployment")
@serve.ingress(fastapi_app)
class PolicyDeployment:
    """One replica: loads the checkpoint, warms it up, then serves batched requests.

    Args:
        cfg: The server config; ``cfg.api_key`` holds the resolved key (None: no auth).
    """

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self._api_key = cfg.api_key
        self._ready = False
        self._deadline_s = cfg.deadline_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        if cfg.deployment.torch_threads > 0 and cfg.device == "cpu":
            import torch

            torch.set_num_threads(cfg.deployment.torch_threads)
        if cfg.checkpoint is None:
            raise ValueError("ServeConfig.checkpoint is not set; pass --checkpoint=DIR (or checkpoint=DIR)")
        t0 = time.perf_counter()
        self.policy = _import_loader(cfg.loader)(cfg.checkpoint, device=cfg.device)
        md = dict(self.policy.metadata)
        self.spec = ObservationSpec.from_metadata(md, cfg.max_image_side if cfg.allow_resize else None)
        self._load_ms = (time.perf_counter() - t0) * 1e3
        self.model_id = str(md.get("model_id", md.get("name", cfg.checkpoint)))
        self._policy_metadata = md
        self._warmup_ms = self._warm_up()
        self._ready = True
        logger.info(
            "policy %s ready: load %.0f ms, warm-up %.0f ms", self.model_id, self._load_ms, self._warmup_ms
        )

    # ------------------------------------------------------------------ lifecycle
    def _example_obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {k: np.zeros(s, np.uint8) for k, s in self.spec.image_shapes.items()}
        obs[protocol.STATE_KEY] = np.zeros(self.spec.state_dim, np.float32)
        obs[protocol.TASK_KEY] = "warm up"
        return obs

    def _warm_up(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.cfg.warmup_steps):
            for n in sorted({1, self.cfg.batching.max_batch_size}):
                outs = self._run_model([self._example_obs() for _ in range(n)])
                for o in outs:
                    postprocess_actions(o["actions"], self.spec)
        return (time.perf_counter() - t0) * 1e3

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply run-time settings (Ray Serve ``user_config``): batch size, batch wait, deadline."""
        if "max_batch_size" in user_config:
            n = int(user_config["max_batch_size"])
            if n < 1:
                raise ValueError(f"max_batch_size must be >= 1, got {n}")
            self._infer_batched.set_max_batch_size(n)
        if "batch_wait_timeout_s" in user_config:
            self._infer_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if "deadline_s" in user_config:
            d = float(user_config["deadline_s"])
            if d <= 0:
                raise ValueError(f"deadline_s must be > 0, got {d}")
            self._deadline_s = d
        logger.info("reconfigured: %s", user_config)

    def check_health(self) -> None:
        """Ray's periodic health check: fail if the model worker is gone."""
        if not self._ready or self.policy is None:
            raise RuntimeError("policy replica is not ready")

    # ------------------------------------------------------------------ model
    def _run_model(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fn = getattr(self.policy, "infer_batch", None)
        outs = fn(batch) if fn is not None else [self.policy.infer(o) for o in batch]
        if len(outs) != len(batch):
            raise InternalServerError(f"policy returned {len(outs)} results for a batch of {len(batch)}")
        return list(outs)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _infer_batched(self, items: list[_Item]) -> list[Any]:
        t_start = time.monotonic()
        live = [i for i, it in enumerate(items) if it.deadline > t_start]
        results: list[Any] = [
            DeadlineExceededError("deadline passed while the request waited for the model") for _ in items
        ]
        if not live:
            return results
        batch = [items[i].obs for i in live]
        mode = self.cfg.deployment.model_execution
        if mode == "auto":
            mode = "inline" if self._infer_batched._get_max_batch_size() > 1 else "thread"
        t0 = time.perf_counter()
        try:
            if mode == "inline":
                # Blocks the loop for one batch: what arrives meanwhile queues up and joins the next batch
                # (see DeploymentConfig.model_execution for why this beats a thread under batching).
                outs = self._run_model(batch)
            else:
                outs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_model, batch
                )
        except PolicyServerError as e:
            return [e] * len(items)
        except Exception as e:
            logger.exception("policy failed on a batch of %d", len(live))
            return [InternalServerError(f"policy failed: {type(e).__name__}: {e}")] * len(items)
        infer_ms = (time.perf_counter() - t0) * 1e3
        for i, out in zip(live, outs, strict=True):
            results[i] = (out, infer_ms, len(live), t_start)
        return results

    async def _act(self, raw: Any, t_recv: float, timing: dict[str, float]) -> dict[str, Any]:
        """Validate one decoded request, run it through the batcher and build the reply."""
        t0 = time.perf_counter()
        obs, meta = validate_observation(raw, self.spec)
        timing["validate_ms"] = (time.perf_counter() - t0) * 1e3
        rid = meta.request_id or uuid.uuid4().hex
        deadline_s = min(self._deadline_s, meta.deadline_s or self._deadline_s)
        deadline = t_recv + deadline_s
        t_q = time.monotonic()
        try:
            res = await asyncio.wait_for(
                self._infer_batched(_Item(obs, deadline)), deadline - time.monotonic()
            )
        except TimeoutError:
            raise DeadlineExceededError(
                f"no answer within the deadline of {deadline_s:.3f}s; the server is busy or the deadline is "
                "too short",
                request_id=rid,
            ) from None
        if isinstance(res, PolicyServerError):
            res.request_id = rid
            raise res
        out, infer_ms, batch_size, t_batch = res
        timing["queue_ms"] = (t_batch - t_q) * 1e3
        timing["infer_ms"] = infer_ms
        timing["batch_size"] = float(batch_size)
        t1 = time.perf_counter()
        actions, n_clipped = postprocess_actions(out["actions"], self.spec)
        reply: dict[str, Any] = {
            "actions": actions,
            protocol.REQUEST_ID_KEY: rid,
            "model_id": self.model_id,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "actions_clipped": n_clipped,
        }
        if meta.timestamp is not None:
            reply[protocol.TIMESTAMP_KEY] = meta.timestamp
        sub = out.get("subgoal_image")
        if self.cfg.return_subgoal_image and sub is not None:
            reply["subgoal_image"] = np.asarray(sub, dtype=np.uint8)
        timing["postprocess_ms"] = (time.perf_counter() - t1) * 1e3
        timing["total_ms"] = (time.monotonic() - t_recv) * 1e3
        reply["server_timing"] = timing
        return reply

    # ------------------------------------------------------------------ auth / limits
    def _check_key(self, header: str | None) -> None:
        if self._api_key is None:
            return
        if not header:
            raise UnauthorizedError("missing API key; send the header 'Authorization: Api-Key <key>'")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "api-key" or not hmac.compare_digest(
            key.strip().encode(), self._api_key.encode()
        ):
            raise UnauthorizedError("wrong API key (expected the header 'Authorization: Api-Key <key>')")

    def _check_version(self, header: str | None) -> None:
        if header is not None and header.strip() != str(protocol.PROTOCOL_VERSION):
            raise protocol.BadRequestError(
                f"client speaks protocol {header.strip()!r}, this server speaks {protocol.PROTOCOL_VERSION}; "
                "use a matching policy_server client"
            )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise PayloadTooLargeError(
                f"body of {cl} bytes exceeds the limit of {limit} bytes; send images at the size in /metadata"
            )
        chunks: list[bytes] = []
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ HTTP endpoints
    @fastapi_app.post("/act", openapi_extra=_ACT_OPENAPI, responses=_ERRORS, response_class=Response)
    async def act(self, request: Request) -> Response:
        """Run the policy on one msgpack-numpy observation."""
        t_recv = time.monotonic()
        timing: dict[str, float] = {}
        try:
            self._check_key(request.headers.get(protocol.API_KEY_HEADER))
            self._check_version(request.headers.get(protocol.VERSION_HEADER))
            if not self._ready:
                raise NotReadyError("model is still loading; retry shortly")
            body = await self._read_body(request)
            t0 = time.perf_counter()
            raw = protocol.unpackb(body, max_bytes=self.cfg.max_body_bytes)
            timing["decode_ms"] = (time.perf_counter() - t0) * 1e3
            reply = await self._act(raw, t_recv, timing)
            return Response(content=protocol.packb(reply), media_type=protocol.CONTENT_TYPE)
        except PolicyServerError as e:
            if e.status >= 500:
                logger.warning("act failed: %s", e)
            return _error_response(e)
        except Exception as e:
            logger.exception("unexpected error in /act")
            return _error_response(
                InternalServerError(f"internal error ({type(e).__name__}); see server logs")
            )

    @fastapi_app.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> HealthResponse:
        """Liveness: the replica answers."""
        return HealthResponse()

    @fastapi_app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 once the model is loaded and warmed up, 503 before."""
        body = ReadyResponse(
            ready=self._ready, model_id=self.model_id, warmup_ms=self._warmup_ms, replica=self._replica_id()
        )
        return JSONResponse(body.model_dump(), status_code=200 if self._ready else 503)

    @staticmethod
    def _replica_id() -> str | None:
        try:
            return str(serve.get_replica_context().replica_id.unique_id)
        except Exception:  # outside a Serve replica (the class used directly)
            return None

    def metadata_dict(self) -> dict[str, Any]:
        """The policy's metadata plus the contract the server enforces (JSON-able)."""
        md = _jsonable(self._policy_metadata)
        md.update(
            protocol_version=protocol.PROTOCOL_VERSION,
            model_id=self.model_id,
            chunk_size=self.spec.chunk_size,
            image_shapes={k: list(v) for k, v in self.spec.image_shapes.items()},
            state_dim=self.spec.state_dim,
            action_dim=self.spec.action_dim,
            action_low=self.spec.action_low.tolist(),
            action_high=self.spec.action_high.tolist(),
            max_batch_size=int(self._infer_batched._get_max_batch_size()),
            deadline_s=self._deadline_s,
            max_body_bytes=self.cfg.max_body_bytes,
            image_size_exact=not self.cfg.allow_resize,
            api_key_required=self._api_key is not None,
            openpi_key_map=dict(protocol.OPENPI_KEY_MAP),
        )
        return md

    @fastapi_app.get("/metadata", response_model=MetadataResponse, responses=_ERRORS)
    async def metadata(self, request: Request) -> JSONResponse:
        """The checkpoint's inference contract (camera keys and sizes, chunk, action range, rates)."""
        try:
            self._check_key(request.headers.get(protocol.API_KEY_HEADER))
        except PolicyServerError as e:
            return _error_response(e)
        return JSONResponse(self.metadata_dict())

    # ------------------------------------------------------------------ websocket (openpi protocol)
    @fastapi_app.websocket("/")
    async def websocket_root(self, ws: WebSocket) -> None:
        """Openpi's protocol at the root, where ``WebsocketClientPolicy(host, port)`` connects."""
        await self._serve_ws(ws)

    @fastapi_app.websocket("/ws")
    async def websocket(self, ws: WebSocket) -> None:
        """The same protocol at ``/ws``."""
        await self._serve_ws(ws)

    async def _serve_ws(self, ws: WebSocket) -> None:
        try:
            self._check_key(ws.headers.get(protocol.API_KEY_HEADER.lower()))
        except UnauthorizedError as e:
            logger.info("websocket refused: %s", e.message)
            await ws.close(code=1008, reason=e.message[:120])  # before accept: the client sees HTTP 403
            return
        await ws.accept()
        await ws.send_bytes(protocol.packb(self.metadata_dict()))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                t_recv = time.monotonic()
                data = msg.get("bytes")
                if data is None:
                    err: PolicyServerError = protocol.BadRequestError(
                        "send observations as binary msgpack-numpy frames, not text"
                    )
                    await ws.send_text(_json_text(err))
                    continue
                reply = await self._ws_one(data, t_recv)
                if isinstance(reply, PolicyServerError):
                    await ws.send_text(_json_text(reply))
                else:
                    await ws.send_bytes(reply)
        except WebSocketDisconnect:
            return
        except Exception as e:  # the proxy went away (shutdown, node loss): nothing left to answer
            logger.info("websocket closed: %r", e, exc_info=not isinstance(e, OSError | ConnectionError))

    async def _ws_one(self, data: bytes, t_recv: float) -> bytes | PolicyServerError:
        timing: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            raw = protocol.unpackb(data, max_bytes=self.cfg.max_body_bytes)
            timing["decode_ms"] = (time.perf_counter() - t0) * 1e3
            if isinstance(raw, dict) and "__ctrl__" in raw:  # openpi episode hooks: acknowledge
                return protocol.packb({"__ack__": str(raw["__ctrl__"])})
            return protocol.packb(await self._act(raw, t_recv, timing))
        except PolicyServerError as e:
            return e
        except Exception as e:
            logger.exception("unexpected error on the websocket")
            return InternalServerError(f"internal error ({type(e).__name__}); see server logs")


def build_deployment(cfg: ServeConfig, user_config: dict[str, Any] | None = None) -> Any:
    """Bind :class:`PolicyDeployment` with replicas, resources, queues and batching taken from ``cfg``.

    Args:
        cfg: The server config (its API key is resolved here, in the driver).
        user_config: Run-time settings to use instead of ``cfg``'s (``max_batch_size``,
            ``batch_wait_timeout_s``, ``deadline_s``). Redeploying the same ``cfg`` with another
            ``user_config`` calls ``reconfigure`` on the running replicas instead of restarting them.

    Returns:
        A bound Ray Serve ``Application``.
    """
    d = cfg.deployment
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "user_config": {**cfg.user_config(), **(user_config or {})},
    }
    if d.autoscaling.enabled:
        opts["autoscaling_config"] = {
            "min_replicas": d.autoscaling.min_replicas,
            "max_replicas": d.autoscaling.max_replicas,
            "target_ongoing_requests": d.autoscaling.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = d.num_replicas
    resolved = replace(cfg, api_key=cfg.resolved_api_key())
    return PolicyDeployment.options(**opts).bind(resolved)
