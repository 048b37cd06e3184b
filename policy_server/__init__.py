"""policy_server: Ray Serve deployment, wire protocol, robot-side client and action-chunk broker.

``PolicyClient`` and ``ActionChunkBroker`` import numpy, msgpack and requests/websockets only; the Ray
Serve side (``policy_server.deployment``, ``policy_server.app``) is imported only when used.
"""

import importlib
from typing import Any

from policy_server.configs import ServeConfig

__all__ = ["ActionChunkBroker", "PolicyClient", "ServeConfig", "build_app"]

_LAZY = {
    "PolicyClient": "policy_server.client",
    "ActionChunkBroker": "policy_server.broker",
    "build_app": "policy_server.app",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'policy_server' has no attribute {name!r}")
