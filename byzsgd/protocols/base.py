"""What every protocol provides, and what every node looks like to a runtime.

A node is plain Python: the runtime hands it one message at a time and sends the messages it
returns. It never knows which runtime hosts it, which is what lets the same logic run in the
deterministic in-process simulator and on Ray.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from byzsgd.aggregators import Aggregator
from byzsgd.messages import Inbox, Message
from byzsgd.nodes import node_index, server_ids, worker_ids
from byzsgd.registry import Registry

if TYPE_CHECKING:
    from byzsgd.config import ExperimentConfig
    from byzsgd.training import Workload

__all__ = [
    "PROTOCOLS",
    "Node",
    "Protocol",
    "ServerNode",
    "node_index",
    "aggregate_payloads",
    "register",
    "server_ids",
    "stack_payloads",
    "to_payload",
    "worker_ids",
]


# Bytes written by to_payload and stack_payloads in this process, by function: the payload copies
# a step makes outside the model's own arithmetic (benchmarks/overhead.py prints them per step).
copied_bytes: Counter[str] = Counter()


def to_payload(vector: torch.Tensor) -> np.ndarray:
    """A tensor as the float32 numpy vector that travels between nodes (a fresh copy)."""
    payload = vector.detach().to("cpu", torch.float32).numpy().copy()
    copied_bytes["to_payload"] += payload.nbytes
    return payload


def stack_payloads(payloads: list[np.ndarray | torch.Tensor], device: torch.device) -> torch.Tensor:
    """Received payloads as one (n, d) tensor on ``device`` (one copy, whatever their source).

    A CPU float32 tensor among them (a node's own vector) is read in place, not copied first."""
    rows = [p.detach().to("cpu", torch.float32).numpy() if isinstance(p, torch.Tensor) else p for p in payloads]
    stacked = np.stack(rows)
    copied_bytes["stack_payloads"] += stacked.nbytes
    return torch.from_numpy(stacked).to(device)


def aggregate_payloads(
    rule: Callable[[Any], Any], payloads: list[np.ndarray | torch.Tensor], device: torch.device
) -> torch.Tensor:
    """`rule` over received payloads (and a node's own vector), as a tensor on ``device``.

    On the CPU a library rule reads the payloads in place, as a list of rows: stacking them
    first would copy every byte once more (measured: ~1 ms per 6.5 MB row, more than a 4-row
    median itself). Elsewhere, and for plain functions, they are stacked once."""
    if device.type != "cpu" or not isinstance(rule, Aggregator):
        return rule(stack_payloads(payloads, device))
    rows = [p.detach().to(torch.float32).numpy() if isinstance(p, torch.Tensor) else p for p in payloads]
    return torch.as_tensor(rule(rows))


class Node:
    """A protocol participant. Subclasses fill ``inbox`` and implement ``on_message``."""

    role = "worker"
    inbox: Inbox

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.step = 0
        # (step, model) snapshots the runtime forwards to the monitor; servers fill it.
        self.reports: list[tuple[int, np.ndarray]] = []

    def start(self) -> list[Message]:
        return []

    def on_message(self, message: Message) -> list[Message]:
        raise NotImplementedError

    @property
    def rejected(self) -> Counter[str]:
        return self.inbox.rejected

    def drain_reports(self) -> list[tuple[int, np.ndarray]]:
        reports, self.reports = self.reports, []
        return reports


class ServerNode(Node):
    """A node that holds a model the experiment evaluates."""

    role = "server"

    def __init__(self, node_id: str, vector: torch.Tensor, report_every: int, steps: int) -> None:
        super().__init__(node_id)
        self.vector = vector
        self.report_every = report_every
        self.steps = steps

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def report(self) -> None:
        if self.step % self.report_every == 0 or self.step == self.steps:
            self.reports.append((self.step, to_payload(self.vector)))


class Protocol:
    """A registered protocol: its option section, its checks, and how to build its nodes."""

    name: str = ""
    options: type = object
    # Whether the servers aggregate gradients with config.aggregator (else setting one only warns).
    uses_aggregator: bool = True

    def validate(self, config: ExperimentConfig) -> None:
        pass

    def server_ids(self, config: ExperimentConfig) -> list[str]:
        return server_ids(config.nodes.n_ps)

    def worker_ids(self, config: ExperimentConfig) -> list[str]:
        return worker_ids(config.nodes.n_w)

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        raise NotImplementedError

    def gradient_quorum(self, config: ExperimentConfig) -> int:
        """How many gradients a correct server aggregates per step: the first n_w - f_w by
        default. An optimal attack searches its scale against a quorum of this size."""
        return config.nodes.n_w - config.nodes.f_w

    def worst_case_workers(self, config: ExperimentConfig, count: int) -> list[int] | None:
        """Worker indices an omniscient adversary would corrupt (used when ``attack.ids`` is
        not given), or None to let the fault injector draw them at random."""
        return None

    def derive(self, config: ExperimentConfig) -> dict[str, Any]:
        """Results of expensive searches on the config (DETOX's worst case), computed once per
        run in the driver; the plan carries them to every process that builds nodes."""
        return {}

    def restore(self, derived: dict[str, Any]) -> None:
        """Adopt what :meth:`derive` computed in the driver, so building nodes repeats no search."""

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        """Derived settings worth printing and recording (e.g. ByzSGD's gather period)."""
        return {}


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register(protocol: Protocol) -> Protocol:
    """Make ``protocol`` selectable by name (``protocol:`` in YAML); each protocol module calls it."""
    PROTOCOLS.register(protocol.name)(protocol)
    return protocol
