"""Node ids: servers are ``ps0, ps1, ...``, workers ``w0, w1, ...``."""

from __future__ import annotations


def server_ids(count: int) -> list[str]:
    return [f"ps{i}" for i in range(count)]


def worker_ids(count: int) -> list[str]:
    return [f"w{i}" for i in range(count)]


def node_index(node_id: str) -> int:
    """The index in its role of ``ps3`` or ``w3`` (3); -1 for a name that is neither."""
    digits = node_id.lstrip("psw")
    return int(digits) if digits.isdigit() else -1
