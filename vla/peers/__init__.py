"""Peers: other projects' policies trained on our demonstrations, behind our policy interface.

A peer checkpoint is a folder with ``peer.json`` (``{"type": "<peer type>", ...}``) beside the peer's own
files. :func:`load_peer` reads the type and returns an object with ``reset()``, ``infer(obs)`` and
``metadata``, which is all ``sim.run_eval`` needs. Imports are lazy: ``import vla.peers`` stays light.

Known types: ``lerobot_act`` (lerobot's ACT, :mod:`vla.peers.lerobot_act`, trained by ``vla-train-act``).
"""

from __future__ import annotations

import difflib
import importlib
import json
from pathlib import Path
from typing import Any

__all__ = ["PEER_FILE", "PEER_TYPES", "is_peer_checkpoint", "load_peer"]

PEER_FILE = "peer.json"
# peer type -> "module:class" whose ``from_pretrained(path, device=None)`` loads it.
PEER_TYPES: dict[str, str] = {"lerobot_act": "vla.peers.lerobot_act:ActAdapter"}


def is_peer_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``peer.json``."""
    return (Path(path) / PEER_FILE).is_file()


def load_peer(path: str | Path, device: str | None = None) -> Any:
    """Load the peer checkpoint in ``path`` for inference.

    Args:
        path: a folder with ``peer.json``.
        device: torch device; ``None`` reads ``$VLA_POLICY_DEVICE`` (default ``cpu``).

    Returns:
        An object with ``reset()``, ``infer(obs) -> {"actions": (chunk, 7)}`` and ``metadata``.

    Raises:
        FileNotFoundError: no ``peer.json`` in ``path``.
        ValueError: ``peer.json`` names an unknown type.
    """
    marker = Path(path) / PEER_FILE
    if not marker.is_file():
        raise FileNotFoundError(f"{path} is not a peer checkpoint: it has no {PEER_FILE}")
    kind = json.loads(marker.read_text()).get("type")
    if kind not in PEER_TYPES:
        hint = difflib.get_close_matches(str(kind), list(PEER_TYPES), n=1)
        raise ValueError(
            f"{marker}: unknown peer type {kind!r}; known types: {', '.join(PEER_TYPES)}"
            + (f". Did you mean {hint[0]!r}?" if hint else "")
        )
    module, cls = PEER_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), cls).from_pretrained(path, device=device)
