"""Synchronous ByzSGD (El-Mhamdi et al., arXiv 1905.03853, the synchronous variant).

Servers step as the asynchronous ByzSGD servers do (MDA step on the first q_w gradients, DMC
Gather every T steps) but no longer push their models: a worker *pulls* them.

Scatter step t (t mod T != 0): the worker asks ONE server for its model ("pull" for step t),
server t mod n_ps first, and uses it if it passes two filters; if a filter rejects it, or no
answer comes within ``pull_timeout`` network time units (a crashed or silent server), it asks
the next server in that rotation. Gather step (t mod T == 0): it asks every server and takes
the coordinate-wise median of the first q_ps = n_ps - f_ps models, as the paper's workers pull
from every server there. Either way it sends its gradient to every server.

- Lipschitz filter (Kardam's rule): k = ||g_t - g_prev|| / ||x_t - x_prev||, where g_t is the
  worker's gradient at the candidate model x_t and (x_prev, g_prev) its last accepted model
  and the gradient there; accept if k <= the 100 (n_ps - f_ps)/n_ps percentile of the k values
  seen so far (every candidate's k is recorded: recording only accepted ones would shrink the
  percentile step after step until every model fails).
- Outlier filter: accept if ||x_t - x_expected|| <= lr ||g_prev|| ((3T+2)(n_w-f_w)/(4 f_w)
  + 2((t-1) mod T)), where x_expected = x_prev - lr g_prev is where the worker's own gradient
  would have taken its last accepted model (the paper's local estimate; the bound grows with
  the steps since the last Gather because correct servers drift apart between Gathers).
- Non-finite statistics (ours): a candidate whose distance or gradient change is not finite
  (a model near float32's limit overflows them) is rejected (``filter_non_finite``) and its k is
  not recorded: a NaN in the sorted history would break the percentile for the rest of the run.

Our choices where the paper leaves the details open: a server answers a pull for step t once
it holds a model of step t or later, with the newest one it has (a slow worker then gets a
fresher model; its gradient for a step the servers already left is dropped as stale). If every
server was asked and rejected, the worker falls back to the median of the first q_ps answers
(counted as ``filter_fallback``), which q_ps - f_ps > f_ps correct models make safe. Filter
rejections are counted as ``filter_lipschitz`` and ``filter_outlier`` in the worker's rejection
counters (metrics: ``rejected_filter_*``).

Messages per step: about n_w pulls, n_w answers and n_w n_ps gradients (plus retries), against
the asynchronous variant's n_ps n_w models and n_w n_ps gradients.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from byzsgd.aggregators import make_aggregator
from byzsgd.config import ExperimentConfig
from byzsgd.messages import Message, broadcast, is_timer, timer
from byzsgd.optim import make_estimator
from byzsgd.optim.estimators import GradientEstimator
from byzsgd.protocols.base import Node, aggregate_payloads, register, to_payload
from byzsgd.protocols.byzsgd import ByzSGD, ByzSGDOptions, ByzSGDServer, ByzSGDWorker, gather_period
from byzsgd.registry import ConfigError
from byzsgd.training import Workload


@dataclass
class ByzSGDSyncOptions(ByzSGDOptions):
    warmup: int = 3  # k values recorded before the Lipschitz filter starts rejecting
    pull_timeout: float = 4.0  # network time units a worker waits for a pulled model before asking the next server


PULL = np.zeros(0, dtype=np.float32)  # a pull carries no numbers: its kind and round are the request


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


class ByzSGDSyncServer(ByzSGDServer):
    """The asynchronous server's steps; its models go out only as answers to pulls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_pulls()

    @classmethod
    def adopt(cls, server: ByzSGDServer) -> ByzSGDSyncServer:
        """The sync server with ``server``'s state: ByzSGD builds the server, so its settings are
        assembled in one place."""
        sync = cls.__new__(cls)
        sync.__dict__.update(server.__dict__)
        sync._init_pulls()
        return sync

    def _init_pulls(self) -> None:
        self.published: tuple[int, np.ndarray] | None = None  # (step, model) workers may have
        self.pulls: dict[int, list[str]] = {}  # step -> workers waiting for a model of that step
        self.last_pull: dict[str, int] = {}  # per worker, the last step it was answered for

    def start(self) -> list[Message]:
        return self._publish(super().start())

    def on_message(self, message: Message) -> list[Message]:
        if message.kind != "pull":
            return self._publish(super().on_message(message))
        if message.sender not in self.workers:
            self.inbox.rejected["unexpected_sender"] += 1
        elif not isinstance(message.round, int) or message.round <= self.last_pull.get(message.sender, -1):
            self.inbox.rejected["stale"] += 1  # one answer per worker and step: a pull cannot be replayed
        elif message.round > self.step + self.inbox.window:
            self.inbox.rejected["future"] += 1
        else:
            self.last_pull[message.sender] = message.round
            self.pulls.setdefault(message.round, []).append(message.sender)
        return self._answer()

    def _publish(self, out: list[Message]) -> list[Message]:
        """Keep the gather messages; the model the async server would broadcast is published."""
        for message in out:
            if message.kind == "model":
                self.published = (message.round, message.payload)
        return [m for m in out if m.kind != "model"] + self._answer()

    def _answer(self) -> list[Message]:
        if self.published is None:
            return []
        step, model = self.published
        out: list[Message] = []
        for round_ in sorted(r for r in self.pulls if r <= step):
            out += broadcast(self.node_id, self.pulls.pop(round_), "model", round_, model)
        return out


class ByzSGDSyncWorker(ByzSGDWorker):
    """The async worker's state plus the pulls and the two filters."""

    def __init__(
        self,
        node_id: str,
        workload: Workload,
        *,
        period: int,
        lr: float,
        n_w: int,
        f_w: int,
        percentile: float,
        warmup: int,
        pull_timeout: float,
        **worker: Any,
    ) -> None:
        """``worker``: the :class:`ByzSGDWorker` settings (servers, model_rule, q_ps, window, estimator)."""
        super().__init__(node_id, workload, **worker)
        self.period, self.lr = period, lr
        self.n_w, self.f_w = n_w, f_w
        self.percentile, self.warmup = percentile, warmup
        self.pull_timeout = pull_timeout
        self.lipschitz_history: list[float] = []  # every candidate's k, kept sorted for the percentile
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (x_prev, g_prev)
        self.accepted_from: list[str] = []  # the server whose model each step used ("median" at Gather)
        self.asked: list[str] = []  # servers asked for this step's model, in rotation order
        self.tried: set[str] = set()  # servers whose model this step was already filtered
        self.batch: np.ndarray | None = None

    @property
    def gathering(self) -> bool:
        return self.step % self.period == 0 or self.previous is None

    def start(self) -> list[Message]:
        return self._begin_step()

    def on_message(self, message: Message) -> list[Message]:
        if is_timer(message):
            timed_out = message.round == self.step and int(message.payload[1]) == len(self.asked)
            return self._ask_next() + self._advance() if timed_out and not self.gathering else []
        if not self.inbox.add(message):
            return []
        return self._advance()

    def _begin_step(self) -> list[Message]:
        self.asked, self.tried = [], set()
        self.batch = self.sampler.next()
        if self.gathering:
            self.asked = list(self.servers)
            return broadcast(self.node_id, self.servers, "pull", self.step, PULL)
        return self._ask_next()

    def _ask_next(self) -> list[Message]:
        """Pull this step's model from the next server in the rotation, with a timeout."""
        if len(self.asked) == len(self.servers):
            return []
        start = self.step % len(self.servers)
        server = (self.servers[start:] + self.servers[:start])[len(self.asked)]
        self.asked.append(server)
        return [Message(self.node_id, server, "pull", self.step, PULL)] + [
            timer(self.node_id, self.step, self.pull_timeout, tag=len(self.asked))
        ]

    def _advance(self) -> list[Message]:
        out: list[Message] = []
        while (chosen := self._choose(out)) is not None:
            point, gradient, source = chosen
            self.inbox.advance("model", self.step + 1)
            self.accepted_from.append(source)
            self.previous = (point, gradient)
            if type(self.estimator) is not GradientEstimator:
                gradient, self.last_loss = self.estimator(self.workload, point, self.batch)
            out += broadcast(self.node_id, self.servers, "gradient", self.step, to_payload(gradient))
            self.step += 1
            out += self._begin_step()
        return out

    def _choose(self, out: list[Message]) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """The model this step uses, the gradient there and where it came from, or None while
        waiting (asking the next server into ``out`` when a filter rejected a model)."""
        senders = self.inbox.senders("model", self.step)
        models = dict(zip(senders, self.inbox.quorum("model", self.step, len(senders)) or [], strict=True))
        device = self.workload.device
        if self.gathering:
            if len(models) < self.q_ps:
                return None
            median = aggregate_payloads(self.model_rule, list(models.values())[: self.q_ps], device)
            return self.at(median, self.batch, "median")
        # Filter the asked servers' models in rotation order; one already here when its server's
        # turn comes (sent unasked) is filtered then, and rejections ask the next server at once.
        while (server := next((s for s in self.asked if s in models and s not in self.tried), None)) is not None:
            self.tried.add(server)
            point, gradient, _ = self.at(torch.from_numpy(np.array(models[server])).to(device), self.batch, server)
            if self.passes(point, gradient):
                return point, gradient, server
            out += self._ask_next()
        if len(self.asked) == len(self.servers) and len(models) >= self.q_ps:
            self.inbox.rejected["filter_fallback"] += 1
            median = aggregate_payloads(self.model_rule, list(models.values())[: self.q_ps], device)
            return self.at(median, self.batch, "median")
        return None

    def at(self, point: torch.Tensor, batch: np.ndarray, source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
        gradient, self.last_loss = self.workload.gradient(point, batch)
        return point, gradient, source

    def passes(self, point: torch.Tensor, gradient: torch.Tensor) -> bool:
        x_prev, g_prev = self.previous
        distance = float(torch.linalg.vector_norm(point - x_prev))
        change = float(torch.linalg.vector_norm(gradient - g_prev))
        if not (math.isfinite(distance) and math.isfinite(change)):
            self.inbox.rejected["filter_non_finite"] += 1  # and no k: a NaN would break the sorted history
            return False
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
        if not config.options.pull_timeout > 0:
            raise ConfigError(f"byzsgd-sync.pull_timeout={config.options.pull_timeout}: must be > 0 (time units)")

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        if node_id not in self.worker_ids(config):
            return ByzSGDSyncServer.adopt(super().make_node(config, node_id, workload))
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
            pull_timeout=options.pull_timeout,
            estimator=make_estimator(config.optimizer),
        )


register(ByzSGDSync())
