"""The classic parameter server: the baseline every other protocol is compared against.

One correct server ``ps0`` and ``n_w`` workers, ``f_w`` of them Byzantine. Every step the server
sends its model to every worker, waits for gradients, aggregates them with ``aggregator.name``
(``mean``: vanilla SGD; any robust rule otherwise) and steps. ``ps.wait`` says for which:

* ``quorum`` (default, asynchronous): the first ``n_w - f_w``; the rule then has to absorb up
  to ``f_w`` Byzantine ones among them, so rules such as the median need ``n_w >= 3 f_w + 1``.
* ``all`` (synchronous, as in the CTMA / mu^2-SGD paper): all ``n_w``, so ``n_w >= 2 f_w + 1``
  suffices (17 workers, 8 Byzantine). A worker silent for ``ps.timeout`` network time units is
  faulty under synchrony: once at least ``n_w - f_w`` gradients arrived and the timeout passed,
  the server steps and each missing gradient is a NaN row, which the rule drops and counts
  against its ``f``.

This is ByzSGD's scatter phase with a single server that never gathers, so it runs ByzSGD's
own server and worker nodes rather than a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from byzsgd.config import ExperimentConfig
from byzsgd.messages import Message, broadcast, is_timer, timer
from byzsgd.optim import make_estimator, make_optimizer
from byzsgd.protocols.base import Node, Protocol, aggregate_payloads, register, to_payload
from byzsgd.protocols.byzsgd import ByzSGDServer, check_rule, make_scatter_node
from byzsgd.registry import ConfigError
from byzsgd.training import Workload


@dataclass
class PSOptions:
    window: int = 64  # rounds ahead a node buffers before rejecting messages as "future"
    wait: Literal["quorum", "all"] = "quorum"  # the first n_w - f_w gradients, or all n_w (synchronous)
    timeout: float = 10.0  # wait: all: network time units after which a silent worker counts as faulty


class WaitForAllServer(ByzSGDServer):
    """Steps on all ``n_w`` gradients, or, once ``timeout`` passed, on the at least ``n_w - f_w``
    that arrived with NaN rows for the silent workers (the rule counts them against its f)."""

    def __init__(self, *args: Any, timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self.expired = -1  # the last step whose timeout passed

    def start(self) -> list[Message]:
        return super().start() + [timer(self.node_id, 0, self.timeout)]

    def on_message(self, message: Message) -> list[Message]:
        if is_timer(message):
            self.expired = max(self.expired, message.round)
        elif not self.inbox.add(message):
            return []
        out: list[Message] = []
        while not self.done:
            senders = self.inbox.senders("gradient", self.step)
            if len(senders) < len(self.workers) and not (self.expired >= self.step and len(senders) >= self.q_w):
                break
            received = dict(zip(senders, self.inbox.quorum("gradient", self.step, len(senders)), strict=True))
            self.inbox.advance("gradient", self.step + 1)
            # A silent worker's row: built only when one is silent (a full vector per step otherwise).
            missing = None if len(received) == len(self.workers) else np.full(self.vector.numel(), np.nan, np.float32)
            rows = [received.get(worker, missing) for worker in self.workers]
            gradient = aggregate_payloads(self.aggregator, rows, self.vector.device)
            self.vector = self.optimizer.step(self.vector, gradient)
            self.step += 1
            self.report()
            if not self.done:
                out += broadcast(self.node_id, self.workers, "model", self.step, to_payload(self.vector))
                out.append(timer(self.node_id, self.step, self.timeout))
        return out


def check_single_server(config: ExperimentConfig) -> None:
    """Protocols built around one trusted parameter server: exactly one, never Byzantine."""
    nodes = config.nodes
    if nodes.n_ps != 1 or nodes.f_ps != 0:
        raise ConfigError(
            f"protocol {config.protocol!r} has a single correct parameter server: set nodes.n_ps=1 and "
            f"nodes.f_ps=0 (got n_ps={nodes.n_ps}, f_ps={nodes.f_ps})"
        )
    if nodes.f_w >= nodes.n_w:
        raise ConfigError(f"nodes.f_w={nodes.f_w}: at least one of the n_w={nodes.n_w} workers must be correct")


def check_optimizer(config: ExperimentConfig) -> None:
    make_optimizer(config.optimizer)
    make_estimator(config.optimizer)


def first_model(models: Any) -> Any:
    """A worker's model rule with one server: the one model it received."""
    return models[0]


class ParameterServer(Protocol):
    name = "ps"
    options = PSOptions

    def gradient_quorum(self, config: ExperimentConfig) -> int:
        return config.nodes.n_w if config.options.wait == "all" else super().gradient_quorum(config)

    def validate(self, config: ExperimentConfig) -> None:
        check_single_server(config)
        options = config.options
        if options.window < 1:
            raise ConfigError(f"ps.window={options.window}: must be at least 1")
        if not options.timeout > 0:
            raise ConfigError(f"ps.timeout={options.timeout}: must be > 0 (network time units)")
        nodes = config.nodes
        rule = config.aggregator
        check_rule("aggregator.name", rule.name, nodes.f_w, self.gradient_quorum(config), rule.params)
        check_optimizer(config)

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        options = config.options
        server = {"server": WaitForAllServer, "timeout": options.timeout} if options.wait == "all" else {}
        never = config.steps + 1  # the gather period: there is no other server to gather with
        return make_scatter_node(self, config, node_id, workload, first_model, 1, never, options.window, **server)

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        if config.options.wait == "all":
            return {"wait": "all", "timeout": config.options.timeout}
        return {"q_w": config.nodes.n_w - config.nodes.f_w}


register(ParameterServer())
