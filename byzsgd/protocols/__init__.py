"""Protocols by name (``protocol:`` in YAML). Importing a protocol module registers it."""

from byzsgd.protocols import byzsgd as _byzsgd  # noqa: F401  (registers itself)
from byzsgd.protocols import byzsgd_sync as _byzsgd_sync  # noqa: F401
from byzsgd.protocols import detox as _detox  # noqa: F401
from byzsgd.protocols import draco as _draco  # noqa: F401
from byzsgd.protocols import ps as _ps  # noqa: F401
from byzsgd.protocols import solon as _solon  # noqa: F401
from byzsgd.protocols.base import PROTOCOLS, Node, Protocol, ServerNode, register

__all__ = ["PROTOCOLS", "Node", "Protocol", "ServerNode", "register"]
