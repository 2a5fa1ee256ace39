"""Synchronous ByzSGD (El-Mhamdi et al., arXiv 1905.03853, the synchronous variant).

Servers are the asynchronous ByzSGD servers (MDA step on the first q_w gradients, DMC Gather
every T steps). Workers differ: at a Scatter step t a worker uses ONE server's model, chosen
by rotation (server t mod n_ps first), and accepts it only if it passes two filters; on
rejection it tries the next server. At a Gather step (t mod T == 0) it takes the coordinate-wise
median of the servers' models, as the paper's workers pull from every server there.

- Lipschitz filter (Kardam's rule): k = ||g_t - g_prev|| / ||x_t - x_prev||, where g_t is the
  worker's gradient at the candidate model x_t and (x_prev, g_prev) its last accepted model
  and the gradient there; accept if k <= the 100 (n_ps - f_ps)/n_ps percentile of the k values
  seen so far (every candidate's k is recorded: recording only accepted ones would shrink the
  percentile step after step until every model fails).
- Outlier filter: accept if ||x_t - x_expected|| <= lr ||g_prev|| ((3T+2)(n_w-f_w)/(4 f_w)
  + 2((t-1) mod T)), where x_expected = x_prev - lr g_prev is where the worker's own gradient
  would have taken its last accepted model (the paper's local estimate; the bound grows with
  the steps since the last Gather because correct servers drift apart between Gathers).

Message flow, our choices: servers broadcast each model to every worker (as in the async
variant) and a worker waits for the first q_ps = n_ps - f_ps of them, so a silent Byzantine
server never stalls it; the rotation runs over those arrived models. If every candidate fails,
the worker falls back to their median (counted as ``filter_fallback``), which q_ps - f_ps > f_ps
correct models make safe. Filter rejections are counted as ``filter_lipschitz`` and
``filter_outlier`` in the worker's rejection counters (metrics: ``rejected_filter_*``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import torch

from byzsgd.aggregators import make_aggregator
from byzsgd.config import ExperimentConfig
from byzsgd.messages import Message, broadcast
from byzsgd.optim import make_estimator
from byzsgd.optim.estimators import GradientEstimator
from byzsgd.protocols.base import Node, register, stack_payloads, to_payload
from byzsgd.protocols.byzsgd import ByzSGD, ByzSGDOptions, ByzSGDWorker, Rule, gather_period
from byzsgd.registry import ConfigError
from byzsgd.training import Workload


@dataclass
class ByzSGDSyncOptions(ByzSGDOptions):
    warmup: int = 3  # k values recorded before the Lipschitz filter starts rejecting


def outlier_bound_factor(step: int, period: int, n_w: int, f_w: int) -> float:
    """(3T+2)(n_w - f_w)/(4 f_w) + 2((t-1) mod T): the outlier filter's bound over lr ||g||."""
    if f_w == 0:
        return float("inf")
    return (3 * period + 2) * (n_w - f_w) / (4 * f_w) + 2 * ((step - 1) % period)


def sorted_percentile(values: list[float], q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of an already sorted list: no array
    is built, so keeping the whole history costs one insertion per step, not a sort."""
    position = (len(values) - 1) * q / 100
    low = math.floor(position)
    if low + 1 >= len(values) or values[low + 1] == values[low]:  # also inf == inf: no inf - inf
        return values[low]
    return values[low] + (position - low) * (values[low + 1] - values[low])


class ByzSGDSyncWorker(ByzSGDWorker):
    """The async worker's state plus the two filters; only ``on_message`` differs."""

    def __init__(
        self,
        node_id: str,
        workload: Workload,
        *,
        servers: list[str],
        model_rule: Rule,
        q_ps: int,
        period: int,
        lr: float,
        n_w: int,
        f_w: int,
        percentile: float,
        warmup: int,
        window: int,
        estimator: GradientEstimator | None = None,
    ) -> None:
        super().__init__(
            node_id, workload, servers=servers, model_rule=model_rule, q_ps=q_ps, window=window, estimator=estimator
        )
        self.period, self.lr = period, lr
        self.n_w, self.f_w = n_w, f_w
        self.percentile, self.warmup = percentile, warmup
        self.lipschitz_history: list[float] = []  # every candidate's k, kept sorted for the percentile
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x_prev, g_prev)
        self.accepted_from: list[str] = []  # the server whose model each step used ("median" at Gather)

    def on_message(self, message: Message) -> list[Message]:
        if not self.inbox.add(message):
            return []
        out: list[Message] = []
        while (models := self.inbox.quorum("model", self.step, self.q_ps)) is not None:
            senders = self.inbox.senders("model", self.step)[: self.q_ps]
            self.inbox.advance("model", self.step + 1)
            batch = self.sampler.next()
            point, gradient, source = self.choose(dict(zip(senders, models, strict=True)), batch)
            self.accepted_from.append(source)
            self.previous = (point, gradient)
            if type(self.estimator) is not GradientEstimator:
                gradient, self.last_loss = self.estimator(self.workload, point, batch)
            out += broadcast(self.node_id, self.servers, "gradient", self.step, to_payload(gradient))
            self.step += 1
        return out

    def choose(self, models: dict[str, np.ndarray], batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, str]:
        """The model this step uses, the gradient there, and where it came from."""
        device = self.workload.device
        if self.step % self.period == 0 or self.previous is None:
            return self.at(self.model_rule(stack_payloads(list(models.values()), device)), batch, "median")
        start = self.step % len(self.servers)
        rotation = self.servers[start:] + self.servers[:start]
        for server in [s for s in rotation if s in models]:
            point, gradient, _ = self.at(torch.from_numpy(np.array(models[server])).to(device), batch, server)
            if self.passes(point, gradient):
                return point, gradient, server
        self.inbox.rejected["filter_fallback"] += 1
        return self.at(self.model_rule(stack_payloads(list(models.values()), device)), batch, "median")

    def at(self, point: torch.Tensor, batch: np.ndarray, source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
        gradient, self.last_loss = self.workload.gradient(point, batch)
        return point, gradient, source

    def passes(self, point: torch.Tensor, gradient: torch.Tensor) -> bool:
        x_prev, g_prev = self.previous
        distance = float(torch.linalg.vector_norm(point - x_prev))
        change = float(torch.linalg.vector_norm(gradient - g_prev))
        k = change / distance if distance > 0 else (0.0 if change == 0 else float("inf"))
        history = self.lipschitz_history
        lipschitz_ok = len(history) < self.warmup or k <= sorted_percentile(history, self.percentile)
        bisect.insort(history, k)
        expected = x_prev - self.lr * g_prev
        bound = self.lr * float(torch.linalg.vector_norm(g_prev))
        bound *= outlier_bound_factor(self.step, self.period, self.n_w, self.f_w)
        outlier_ok = float(torch.linalg.vector_norm(point - expected)) <= bound
        if not outlier_ok:
            self.inbox.rejected["filter_outlier"] += 1
        elif not lipschitz_ok:
            self.inbox.rejected["filter_lipschitz"] += 1
        return lipschitz_ok and outlier_ok


class ByzSGDSync(ByzSGD):
    name = "byzsgd-sync"
    options = ByzSGDSyncOptions

    def validate(self, config: ExperimentConfig) -> None:
        super().validate(config)
        if config.options.warmup < 0:
            raise ConfigError(f"byzsgd-sync.warmup={config.options.warmup}: must be >= 0")

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        if node_id not in self.worker_ids(config):
            return super().make_node(config, node_id, workload)
        nodes, options = config.nodes, config.options
        return ByzSGDSyncWorker(
            node_id,
            workload,
            servers=self.server_ids(config),
            model_rule=make_aggregator(options.model_rule, f=nodes.f_ps),
            q_ps=nodes.n_ps - nodes.f_ps,
            period=gather_period(config),
            lr=config.optimizer.lr,
            n_w=nodes.n_w,
            f_w=nodes.f_w,
            percentile=100.0 * (nodes.n_ps - nodes.f_ps) / nodes.n_ps,
            warmup=options.warmup,
            window=options.window,
            estimator=make_estimator(config.optimizer),
        )


register(ByzSGDSync())
