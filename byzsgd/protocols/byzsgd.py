"""Asynchronous ByzSGD (El-Mhamdi et al., "Genuinely Distributed Byzantine Machine Learning").

Scatter, every step t: each server sends its model to the workers; a worker waits for the
first q_ps = n_ps - f_ps models, takes their coordinate-wise median, computes a stochastic
gradient there and sends it to every server; a server waits for the first q_w = n_w - f_w
gradients, aggregates them with MDA and takes an optimizer step.
Gather, every T steps: Distributed Median Contraction — each server replaces its model by the
coordinate-wise median of the first q_ps servers' models (its own included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from byzsgd.aggregators import AGGREGATORS, make_aggregator
from byzsgd.config import ExperimentConfig
from byzsgd.messages import Channel, Inbox, Message, broadcast
from byzsgd.optim import make_estimator, make_optimizer
from byzsgd.optim.estimators import GradientEstimator
from byzsgd.protocols.base import Node, Protocol, ServerNode, aggregate_payloads, node_index, register, to_payload
from byzsgd.registry import ConfigError
from byzsgd.training import Workload

Rule = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ByzSGDOptions:
    period: int | None = None  # T, steps between Gather phases; default floor(1/(3*L*lr)) as in the authors' prototype
    # L, the loss's Lipschitz-smoothness constant in that bound: a user setting, never estimated
    # from the run (the prototype takes L as given); 1.0 is a guess, not a measurement.
    lipschitz: float = 1.0
    max_period: int = 50  # cap on the derived T
    model_rule: str = "median"  # how workers and DMC combine models ("mean" = non-robust baseline)
    window: int = 64  # rounds ahead a node buffers before rejecting messages as "future"


def gather_period(config: ExperimentConfig) -> int:
    options: ByzSGDOptions = config.options
    if options.period is not None:
        return options.period
    derived = math.floor(1.0 / (3.0 * options.lipschitz * config.optimizer.lr))
    return max(1, min(options.max_period, derived))


class ByzSGDServer(ServerNode):
    def __init__(
        self,
        node_id: str,
        vector: torch.Tensor,
        *,
        servers: list[str],
        workers: list[str],
        aggregator: Rule,
        model_rule: Rule,
        optimizer: Any,
        q_w: int,
        q_ps: int,
        period: int,
        steps: int,
        report_every: int,
        window: int,
    ) -> None:
        super().__init__(node_id, vector, report_every, steps)
        self.peers = [s for s in servers if s != node_id]
        self.workers = workers
        self.aggregator = aggregator
        self.model_rule = model_rule
        self.optimizer = optimizer
        self.q_w, self.q_ps, self.period = q_w, q_ps, period
        self.gathering = False
        size = vector.numel()
        self.inbox = Inbox(
            {"gradient": Channel(frozenset(workers), size), "gather": Channel(frozenset(self.peers), size)},
            window=window,
        )

    def start(self) -> list[Message]:
        self.report()
        return broadcast(self.node_id, self.workers, "model", 0, to_payload(self.vector))

    def on_message(self, message: Message) -> list[Message]:
        if not self.inbox.add(message) or self.done:
            return []
        out: list[Message] = []
        while not self.done:
            sent = self._gather() if self.gathering else self._scatter()
            if sent is None:  # the phase's quorum is not there yet
                break
            out += sent
        return out

    def _scatter(self) -> list[Message] | None:
        """A Scatter step: aggregate the round's first q_w gradients and take an optimizer step;
        then send the model to the workers or, every T steps, to the other servers (Gather)."""
        gradients = self.inbox.quorum("gradient", self.step, self.q_w)
        if gradients is None:
            return None
        self.inbox.advance("gradient", self.step + 1)
        gradient = aggregate_payloads(self.aggregator, gradients, self.vector.device)
        self.vector = self.optimizer.step(self.vector, gradient)
        self.step += 1
        if self.done:
            self.report()
            return []
        if self.step % self.period == 0:
            self.gathering = True
            return broadcast(self.node_id, self.peers, "gather", self.step, to_payload(self.vector))
        self.report()
        return broadcast(self.node_id, self.workers, "model", self.step, to_payload(self.vector))

    def _gather(self) -> list[Message] | None:
        """The Gather phase: DMC over the first q_ps - 1 peer models of this step, then back to
        Scatter with the contracted model."""
        models = self.inbox.quorum("gather", self.step, self.q_ps - 1)
        if models is None:
            return None
        self.inbox.advance("gather", self.step + 1)
        self.vector = distributed_median_contraction(self.vector, models, self.model_rule)
        self.gathering = False
        self.report()
        return broadcast(self.node_id, self.workers, "model", self.step, to_payload(self.vector))


def distributed_median_contraction(own: torch.Tensor, peers: list[np.ndarray], model_rule: Rule) -> torch.Tensor:
    """DMC: a server's new model is the coordinate-wise median (``model_rule``) of its own model
    and the models of its first q_ps - 1 peers. Correct servers' models contract towards
    each other however the Byzantine servers pick theirs."""
    return aggregate_payloads(model_rule, [own, *peers], own.device)


class ByzSGDWorker(Node):
    def __init__(
        self,
        node_id: str,
        workload: Workload,
        *,
        servers: list[str],
        model_rule: Rule,
        q_ps: int,
        window: int,
        estimator: GradientEstimator | None = None,
    ) -> None:
        super().__init__(node_id)
        self.workload = workload
        self.estimator = estimator or GradientEstimator()
        self.sampler = workload.sampler(node_index(node_id))
        self.servers = servers
        self.model_rule = model_rule
        self.q_ps = q_ps
        self.inbox = Inbox({"model": Channel(frozenset(servers), workload.dimension)}, window=window)
        self.last_loss = float("nan")

    def on_message(self, message: Message) -> list[Message]:
        if not self.inbox.add(message):
            return []
        out: list[Message] = []
        while (models := self.inbox.quorum("model", self.step, self.q_ps)) is not None:
            self.inbox.advance("model", self.step + 1)
            point = aggregate_payloads(self.model_rule, models, self.workload.device)
            gradient, self.last_loss = self.estimator(self.workload, point, self.sampler.next())
            out += broadcast(self.node_id, self.servers, "gradient", self.step, to_payload(gradient))
            self.step += 1
        return out


class ByzSGD(Protocol):
    name = "byzsgd"
    options = ByzSGDOptions

    def validate(self, config: ExperimentConfig) -> None:
        nodes, options = config.nodes, config.options
        if nodes.n_ps < 3 * nodes.f_ps + 2:
            raise ConfigError(
                f"n_ps={nodes.n_ps} cannot tolerate f_ps={nodes.f_ps}: "
                f"ByzSGD needs n_ps >= 3*f_ps+2 = {3 * nodes.f_ps + 2}"
            )
        if nodes.n_w < 3 * nodes.f_w + 1:
            raise ConfigError(
                f"n_w={nodes.n_w} cannot tolerate f_w={nodes.f_w}: ByzSGD needs n_w >= 3*f_w+1 = {3 * nodes.f_w + 1}"
            )
        if options.period is not None and options.period < 1:
            raise ConfigError(f"byzsgd.period={options.period}: must be at least 1")
        if options.lipschitz <= 0 or options.max_period < 1 or options.window < 1:
            raise ConfigError("byzsgd: lipschitz must be > 0, max_period and window >= 1")
        rule = config.aggregator
        check_rule("aggregator.name", rule.name, nodes.f_w, nodes.n_w - nodes.f_w, rule.params)
        check_rule("byzsgd.model_rule", options.model_rule, nodes.f_ps, nodes.n_ps - nodes.f_ps)

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        nodes, options = config.nodes, config.options
        model_rule = make_aggregator(options.model_rule, f=nodes.f_ps)
        q_ps, period = nodes.n_ps - nodes.f_ps, gather_period(config)
        return make_scatter_node(self, config, node_id, workload, model_rule, q_ps, period, options.window)

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        nodes = config.nodes
        return {"gather_period": gather_period(config), "q_w": nodes.n_w - nodes.f_w, "q_ps": nodes.n_ps - nodes.f_ps}


def make_scatter_node(
    protocol: Protocol,
    config: ExperimentConfig,
    node_id: str,
    workload: Workload,
    model_rule: Rule,
    q_ps: int,
    period: int,
    window: int,
    server: type[ByzSGDServer] | None = None,
    **server_options: Any,
) -> Node:
    """A ByzSGD worker or server (also the parameter server's, which has one server and never
    gathers): workers combine the first ``q_ps`` models with ``model_rule``; servers (``server``,
    default :class:`ByzSGDServer`, with ``server_options``) aggregate the first n_w - f_w
    gradients with ``aggregator`` and gather every ``period`` steps."""
    nodes = config.nodes
    servers, workers = protocol.server_ids(config), protocol.worker_ids(config)
    if node_id in workers:
        return ByzSGDWorker(
            node_id,
            workload,
            servers=servers,
            model_rule=model_rule,
            q_ps=q_ps,
            window=window,
            estimator=make_estimator(config.optimizer),
        )
    return (server or ByzSGDServer)(
        node_id,
        workload.initial_vector(),
        servers=servers,
        workers=workers,
        aggregator=make_aggregator(config.aggregator.name, f=nodes.f_w, **config.aggregator.params),
        model_rule=model_rule,
        optimizer=make_optimizer(config.optimizer),
        q_w=nodes.n_w - nodes.f_w,
        q_ps=q_ps,
        period=period,
        steps=config.steps,
        report_every=config.eval_every,
        window=window,
        **server_options,
    )


def check_rule(field: str, name: str, f: int, inputs: int, params: dict[str, Any] | None = None) -> None:
    """Fail at load time when a rule (with its params: wrappers such as ctma need their base)
    cannot run on the quorum it will be given, or cannot be built from its params."""
    try:
        rule = AGGREGATORS[name]
    except ConfigError as error:
        raise ConfigError(f"{field}: {error}") from None
    needed = rule.min_inputs(f, **(params or {}))
    if inputs < needed:
        raise ConfigError(f"{field}={name!r} with f={f} needs {needed} inputs, but a quorum has {inputs}")
    make_aggregator(name, f=f, **(params or {}))


register(ByzSGD())
