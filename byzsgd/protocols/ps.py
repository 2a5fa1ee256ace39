"""The classic parameter server: the baseline every other protocol is compared against.

One correct server ``ps0`` and ``n_w`` workers, ``f_w`` of them Byzantine. Every step the server
sends its model to every worker, waits for the first ``n_w - f_w`` gradients, aggregates them
with ``aggregator.name`` (``mean``: vanilla SGD; any robust rule otherwise) and steps.

This is ByzSGD's scatter phase with a single server that never gathers, so it runs ByzSGD's
own server and worker nodes rather than a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from byzsgd.config import ExperimentConfig
from byzsgd.optim import make_estimator, make_optimizer
from byzsgd.protocols.base import Node, Protocol, register
from byzsgd.protocols.byzsgd import check_rule, make_scatter_node
from byzsgd.registry import ConfigError
from byzsgd.training import Workload


@dataclass
class PSOptions:
    window: int = 64  # rounds ahead a node buffers before rejecting messages as "future"


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

    def validate(self, config: ExperimentConfig) -> None:
        check_single_server(config)
        if config.options.window < 1:
            raise ConfigError(f"ps.window={config.options.window}: must be at least 1")
        nodes = config.nodes
        rule = config.aggregator
        check_rule("aggregator.name", rule.name, nodes.f_w, nodes.n_w - nodes.f_w, rule.params)
        check_optimizer(config)

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        never = config.steps + 1  # the gather period: there is no other server to gather with
        return make_scatter_node(self, config, node_id, workload, first_model, 1, never, config.options.window)

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"q_w": config.nodes.n_w - config.nodes.f_w}


register(ParameterServer())
