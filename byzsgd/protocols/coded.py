"""Redundancy-based single-server protocols (DRACO, DETOX/ByzShield, Solon): the shared loop.

The training data is cut into partitions ("files"); each worker computes the gradients of the
partitions a *scheme* assigns it and sends one encoded message; the server turns the messages
it has into an aggregate gradient (exact decoding, or majority votes plus a robust rule) and
steps. Replicas of a partition must compute bitwise-equal gradients, so every partition has its
own seeded batch sampler (and its own estimator state, e.g. mu^2-SGD momentum) that advances
once per step on every worker holding it, and every worker uses the server's one model.

The server decodes as soon as the messages it holds determine the aggregate: it waits for at
least ``n_w - f_w`` of them, asks the scheme, and on "not yet" waits for more. A scheme must
always succeed once every worker has been heard from (a worker whose message was rejected as
malformed counts as heard: it will not send another one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzsgd.config import ExperimentConfig
from byzsgd.data import BatchSampler, batch_size_of, partition
from byzsgd.messages import Channel, Inbox, Message, broadcast
from byzsgd.optim import make_estimator, make_optimizer
from byzsgd.protocols.base import Node, Protocol, ServerNode, node_index, stack_payloads, to_payload
from byzsgd.protocols.ps import check_optimizer, check_single_server
from byzsgd.registry import ConfigError
from byzsgd.training import Workload


class NotDecodable(Exception):
    """The messages received so far do not determine the aggregate yet."""


class Scheme:
    """How partitions are assigned, encoded and decoded. Subclasses fill these in."""

    num_workers: int
    num_partitions: int
    message_size: int  # payload length
    dtype: np.dtype = np.dtype(np.float32)  # payload dtype on the wire
    # After a failed attempt, retry on every new message (cheap votes) or only once every
    # worker was heard from (syndrome decoding, whose failures cost far more than successes).
    retry_each_arrival: bool = True

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        raise NotImplementedError

    def encode(self, worker: int, gradients: np.ndarray) -> np.ndarray:
        """The payload of ``worker`` from its partitions' (load, d) float32 gradients."""
        raise NotImplementedError

    def aggregate(self, received: dict[int, np.ndarray], complete: bool) -> np.ndarray:
        """The gradient to step with (mean over partitions, or a robust estimate of it) from
        ``received`` (worker index -> payload). Raises NotDecodable to wait for more; must
        not when ``complete`` (every worker heard from)."""
        raise NotImplementedError


class CodedWorker(Node):
    def __init__(
        self,
        node_id: str,
        workload: Workload,
        *,
        scheme: Scheme,
        samplers: dict[int, BatchSampler],
        estimators: dict[int, Any],
        server: str,
        window: int,
    ) -> None:
        super().__init__(node_id)
        self.workload = workload
        self.scheme = scheme
        self.index = node_index(node_id)
        self.partitions = scheme.partitions_of(self.index)
        self.samplers = samplers
        self.estimators = estimators
        self.server = server
        self.inbox = Inbox({"model": Channel(frozenset([server]), workload.dimension)}, window=window)
        self.last_loss = float("nan")

    def on_message(self, message: Message) -> list[Message]:
        if not self.inbox.add(message):
            return []
        out: list[Message] = []
        while (models := self.inbox.quorum("model", self.step, 1)) is not None:
            self.inbox.advance("model", self.step + 1)
            point = stack_payloads(models, self.workload.device)[0]
            gradients, losses = [], []
            for part in self.partitions:
                vector, loss = self.estimators[part](self.workload, point, self.samplers[part].next())
                gradients.append(to_payload(vector))
                losses.append(loss)
            self.last_loss = float(np.mean(losses))
            payload = self.scheme.encode(self.index, np.stack(gradients))
            out += broadcast(self.node_id, [self.server], "gradient", self.step, payload)
            self.step += 1
        return out


class CodedServer(ServerNode):
    def __init__(
        self,
        node_id: str,
        vector: torch.Tensor,
        *,
        scheme: Scheme,
        workers: list[str],
        optimizer: Any,
        quorum: int,
        steps: int,
        report_every: int,
        window: int,
    ) -> None:
        super().__init__(node_id, vector, report_every, steps)
        self.scheme = scheme
        self.workers = workers
        self.optimizer = optimizer
        self.quorum = quorum
        self.window = window
        self.inbox = Inbox(
            {"gradient": Channel(frozenset(workers), scheme.message_size, np.dtype(scheme.dtype))}, window=window
        )
        self.heard: dict[int, set[str]] = {}  # round -> workers that sent something, valid or not
        self.failed_round = -1  # the last round whose aggregate could not be decoded yet
        self.last_aggregate: np.ndarray | None = None

    def start(self) -> list[Message]:
        self.report()
        return broadcast(self.node_id, self.workers, "model", 0, to_payload(self.vector))

    def on_message(self, message: Message) -> list[Message]:
        self._note_sender(message)
        accepted = self.inbox.add(message)
        if self.done or (not accepted and message.round != self.step):
            return []
        out: list[Message] = []
        while not self.done:
            senders = self.inbox.senders("gradient", self.step)
            if len(senders) < self.quorum:
                break
            payloads = self.inbox.quorum("gradient", self.step, len(senders))
            received = {node_index(s): p for s, p in zip(senders, payloads)}
            complete = len(self.heard.get(self.step, ())) >= len(self.workers)
            if self.failed_round == self.step and not complete and not self.scheme.retry_each_arrival:
                break
            try:
                aggregate = self.scheme.aggregate(received, complete)
            except NotDecodable as reason:
                if complete:
                    problem = f"{self.node_id} step {self.step}: every worker was heard from, but {reason}"
                    raise RuntimeError(problem) from None
                self.failed_round = self.step
                break
            self.inbox.advance("gradient", self.step + 1)
            self.heard.pop(self.step, None)
            self.last_aggregate = aggregate
            gradient = torch.from_numpy(np.asarray(aggregate, dtype=np.float32)).to(self.vector.device)
            self.vector = self.optimizer.step(self.vector, gradient)
            self.step += 1
            self.report()
            if not self.done:
                out += broadcast(self.node_id, self.workers, "model", self.step, to_payload(self.vector))
        return out

    def _note_sender(self, message: Message) -> None:
        """Remember who spoke in a round, even with a rejected payload: that worker is done
        with the round, so waiting longer for it is pointless."""
        if (
            message.kind == "gradient"
            and message.sender in self.inbox.channels["gradient"].senders
            and isinstance(message.round, int)
            and self.step <= message.round <= self.step + self.window
        ):
            self.heard.setdefault(message.round, set()).add(message.sender)


def partition_samplers(config: ExperimentConfig, workload: Workload, count: int, wanted: tuple[int, ...]) -> dict:
    """Seeded samplers of the ``wanted`` partitions among ``count``: every worker holding a
    partition draws the same batches from it."""
    data = config.data
    shards = partition(workload.data.y_train, count, data.partition, data.alpha, config.seed)
    return {p: BatchSampler(shards[p], batch_size_of(data, p, count), config.seed * 1_000_003 + p) for p in wanted}


class CodedProtocol(Protocol):
    """A single-server protocol defined by its scheme."""

    def make_scheme(self, config: ExperimentConfig, dimension: int) -> Scheme:
        raise NotImplementedError

    def check(self, config: ExperimentConfig) -> None:
        """Protocol-specific rules beyond building the scheme."""

    def validate(self, config: ExperimentConfig) -> None:
        check_single_server(config)
        window = getattr(config.options, "window", 1)
        if window < 1:
            raise ConfigError(f"{self.name}.window={window}: must be at least 1")
        scheme = self.make_scheme(config, dimension=2)
        batch_size_of(config.data, 0, scheme.num_partitions)  # per_step: enough samples for every partition
        self.check(config)
        check_optimizer(config)

    def make_node(self, config: ExperimentConfig, node_id: str, workload: Workload) -> Node:
        scheme = self.make_scheme(config, workload.dimension)
        servers, workers = self.server_ids(config), self.worker_ids(config)
        window = config.options.window
        if node_id in workers:
            parts = scheme.partitions_of(node_index(node_id))
            return CodedWorker(
                node_id,
                workload,
                scheme=scheme,
                samplers=partition_samplers(config, workload, scheme.num_partitions, parts),
                estimators={p: make_estimator(config.optimizer) for p in parts},
                server=servers[0],
                window=window,
            )
        return CodedServer(
            node_id,
            workload.initial_vector(),
            scheme=scheme,
            workers=workers,
            optimizer=make_optimizer(config.optimizer),
            quorum=config.nodes.n_w - config.nodes.f_w,
            steps=config.steps,
            report_every=config.eval_every,
            window=window,
        )
