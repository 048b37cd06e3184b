"""Robot-side client of the policy server: numpy, msgpack, requests and websockets only (never torch).

Examples:
    >>> client = PolicyClient("http://127.0.0.1:8000", api_key=None)   # POST /act
    >>> client.metadata["chunk_size"]
    >>> out = client.infer(obs)          # {"actions": float32 (chunk, 7), "server_timing": {...}, ...}
    >>> ws = PolicyClient("ws://127.0.0.1:8000")                         # openpi-style websocket

Both transports send the same msgpack-numpy observation (:mod:`policy_server.protocol`), add a
``request_id`` and the observation ``timestamp``, and drop any reply whose ``request_id`` is not the one
they are waiting for. Connection failures and retryable server errors (5xx: not ready, overloaded,
deadline, a replica that died) are retried with exponential backoff; 4xx errors (bad input, bad key) are
raised at once as the typed errors of :mod:`policy_server.protocol`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests

from policy_server import protocol
from policy_server.protocol import PolicyServerError

__all__ = ["PolicyClient", "PolicyConnectionError"]

logger = logging.getLogger(__name__)


class PolicyConnectionError(ConnectionError):
    """The server could not be reached (or kept failing) after all retries."""


class PolicyClient:
    """Talks to a policy server over HTTP (``http://``, ``https://``) or websocket (``ws://``, ``wss://``).

    Args:
        url: Server address, e.g. ``http://127.0.0.1:8000`` (the app's route prefix may follow) or
            ``ws://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Api-Key <key>`` when given.
        timeout_s: Per-attempt timeout for connecting and for each reply.
        retries: Extra attempts after a connection error or a retryable (5xx) server error.
        backoff_s: First retry delay; it doubles each attempt up to ``max_backoff_s``.
        max_backoff_s: Longest delay between attempts.
        deadline_s: If set, sent with each request so the server gives up (504) after that long.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        deadline_s: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise ValueError(f"policy server url {url!r} must look like http://HOST:PORT or ws://HOST:PORT")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        self.url = url.rstrip("/")
        self.transport = "ws" if parts.scheme in ("ws", "wss") else "http"
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.deadline_s = deadline_s
        self._headers = {protocol.VERSION_HEADER: str(protocol.PROTOCOL_VERSION)}
        if api_key:
            self._headers[protocol.API_KEY_HEADER] = f"Api-Key {api_key}"
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._session: requests.Session | None = None
        self._ws: Any = None
        if self.transport == "http":
            self._session = requests.Session()
            self._session.headers.update(self._headers)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
            self._http_base = base
        self.last_server_timing: dict[str, Any] = {}
        self.retried_attempts = 0  # attempts that failed and were retried, over the client's life

    # ------------------------------------------------------------------ public API
    @property
    def metadata(self) -> dict[str, Any]:
        """The server's metadata (model id, chunk size, image shapes, action range, protocol version)."""
        if self._metadata is None:
            with self._lock:
                if self._metadata is None:
                    md = self._with_retries(self._fetch_metadata_once, "metadata")
                    self._check_version(md)
                    self._metadata = md
        return self._metadata

    def get_server_metadata(self) -> dict[str, Any]:
        """Same as :attr:`metadata` (the name openpi's client uses)."""
        return self.metadata

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation and return the server's reply.

        Args:
            obs: ``observation.images.*`` (HxWx3 uint8), ``observation.state`` (float32), ``task`` (str);
                openpi's LIBERO keys are accepted too. A ``timestamp`` key, if present, is sent as the
                observation time (default: now).

        Returns:
            ``{"actions": float32 (chunk, action_dim), "server_timing": {stage: ms}, "request_id": str,
            "timestamp": float, ...}`` plus ``subgoal_image`` when the server sends it.

        Raises:
            PolicyServerError: A typed server error (4xx at once; 5xx after the retries).
            PolicyConnectionError: The server stayed unreachable through all retries.
        """
        if not isinstance(obs, dict):
            raise TypeError(f"obs must be a dict of observation arrays, got {type(obs).__name__}")
        payload = dict(obs)
        payload[protocol.REQUEST_ID_KEY] = uuid.uuid4().hex
        payload.setdefault(protocol.TIMESTAMP_KEY, time.time())
        if self.deadline_s is not None:
            payload.setdefault(protocol.DEADLINE_KEY, float(self.deadline_s))
        body = protocol.packb(payload)
        rid = payload[protocol.REQUEST_ID_KEY]
        with self._lock:
            if self.transport == "http":
                out = self._with_retries(lambda: self._http_act_once(body, rid), "act")
            else:
                out = self._with_retries(lambda: self._ws_act_once(body, rid), "act")
        self.last_server_timing = dict(out.get("server_timing", {}))
        return out

    def reset(self) -> None:
        """Start a new episode. The served policy is stateless per request, so only local state is reset."""
        self.last_server_timing = {}

    def close(self) -> None:
        """Close the connection (the client reconnects on the next call)."""
        with self._lock:
            self._close_ws()
            if self._session is not None:
                self._session.close()
                self._session = requests.Session()
                self._session.headers.update(self._headers)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ retries
    def _with_retries(self, fn: Any, what: str) -> Any:
        delay = self.backoff_s
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except PolicyServerError as e:
                if not e.retryable:
                    raise
                last = e
            except (requests.ConnectionError, requests.Timeout, OSError, TimeoutError, _WsClosedError) as e:
                last = e
                self._close_ws()
            if attempt < self.retries:
                self.retried_attempts += 1
                logger.warning(
                    "%s to %s failed (%s); retry %d/%d in %.2fs",
                    what,
                    self.url,
                    last,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                delay = min(self.max_backoff_s, max(delay * 2, 1e-3))
        if isinstance(last, PolicyServerError):
            raise last
        raise PolicyConnectionError(
            f"{what}: policy server at {self.url} unreachable after {self.retries + 1} attempts: {last}"
        ) from last

    def _check_version(self, md: dict[str, Any]) -> None:
        v = md.get("protocol_version")
        if v is not None and int(v) != protocol.PROTOCOL_VERSION:
            raise protocol.BadRequestError(
                f"server speaks protocol {v}, this client speaks {protocol.PROTOCOL_VERSION}; "
                "install the matching policy_server client"
            )

    # ------------------------------------------------------------------ HTTP
    def _raise_for_status(self, r: requests.Response) -> None:
        if r.status_code < 400:
            return
        try:
            payload: Any = r.json()
        except ValueError:
            payload = r.text
        raise protocol.error_from_payload(payload, r.status_code)

    def _fetch_metadata_once(self) -> dict[str, Any]:
        if self.transport == "ws":
            self._ensure_ws()
            assert self._metadata_ws is not None
            return self._metadata_ws
        assert self._session is not None
        r = self._session.get(f"{self._http_base}/metadata", timeout=self.timeout_s)
        self._raise_for_status(r)
        md: dict[str, Any] = r.json()
        return md

    def _http_act_once(self, body: bytes, rid: str) -> dict[str, Any]:
        assert self._session is not None
        r = self._session.post(
            f"{self._http_base}/act",
            data=body,
            headers={"Content-Type": protocol.CONTENT_TYPE},
            timeout=self.timeout_s,
        )
        self._raise_for_status(r)
        out = protocol.unpackb(r.content)
        if not isinstance(out, dict) or out.get(protocol.REQUEST_ID_KEY) != rid:
            # A reply for another request (a proxy mix-up or a bug): never act on it.
            raise protocol.InternalServerError(f"reply does not echo request id {rid}; dropped it")
        return out

    # ------------------------------------------------------------------ websocket
    _metadata_ws: dict[str, Any] | None = None

    def _ensure_ws(self) -> Any:
        if self._ws is not None:
            return self._ws
        import websockets.sync.client as ws_client

        try:
            conn = ws_client.connect(
                self.url,
                additional_headers=self._headers,
                compression=None,
                max_size=None,
                open_timeout=self.timeout_s,
            )
        except Exception as e:  # handshake refused (401) or network error
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500:
                body = getattr(e.response, "body", b"") or b""
                try:
                    payload: Any = json.loads(body)
                except ValueError:
                    payload = body.decode("utf-8", errors="replace")
                raise protocol.error_from_payload(payload, status) from None
            if isinstance(e, OSError | TimeoutError):
                raise
            raise _WsClosedError(str(e)) from e
        try:
            first = conn.recv(timeout=self.timeout_s)
        except Exception as e:
            conn.close()
            raise _WsClosedError(f"no metadata frame: {e}") from e
        if isinstance(first, str):
            conn.close()
            raise _text_error(first)
        self._metadata_ws = protocol.unpackb(first)
        self._ws = conn
        return conn

    def _close_ws(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # already broken; nothing to clean up
                logger.debug("closing a broken websocket", exc_info=True)
            self._ws = None

    def _ws_act_once(self, body: bytes, rid: str) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        conn = self._ensure_ws()
        try:
            conn.send(body)
            t_end = time.monotonic() + self.timeout_s
            while True:
                frame = conn.recv(timeout=max(1e-3, t_end - time.monotonic()))
                if isinstance(frame, str):
                    raise _text_error(frame)
                out = protocol.unpackb(frame)
                if isinstance(out, dict) and out.get(protocol.REQUEST_ID_KEY) == rid:
                    return out
                logger.warning(
                    "dropping a stale websocket reply (request id %s)",
                    out.get(protocol.REQUEST_ID_KEY) if isinstance(out, dict) else None,
                )
        except ConnectionClosed as e:
            self._close_ws()
            raise _WsClosedError(str(e)) from e
        except TimeoutError:
            # The connection is in an unknown state (a late reply may still come): start afresh.
            self._close_ws()
            raise


class _WsClosedError(Exception):
    """The websocket closed or failed mid-request (retried with a fresh connection)."""


def _text_error(text: str) -> PolicyServerError:
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = text
    return protocol.error_from_payload(payload, 500)


def make_example_observation(
    metadata: dict[str, Any], seed: int = 0, task: str = "pick up the cube"
) -> dict[str, Any]:
    """Build a random observation that matches a server's ``/metadata`` (for smoke tests and benchmarks).

    Args:
        metadata: The server's metadata (``image_shapes``, ``state_dim``).
        seed: Random seed.
        task: The instruction.

    Returns:
        An observation dict with our keys.
    """
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {
        key: rng.integers(0, 256, size=tuple(shape), dtype=np.uint8)
        for key, shape in metadata["image_shapes"].items()
    }
    obs[protocol.STATE_KEY] = rng.uniform(-1, 1, size=(int(metadata["state_dim"]),)).astype(np.float32)
    obs[protocol.TASK_KEY] = task
    return obs
