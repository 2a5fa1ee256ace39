"""The fault injector: decides who is Byzantine (or faulty) and rewrites what they send.

A Byzantine node runs the correct node's logic; the runtime passes its outgoing messages
through :meth:`FaultInjector.corrupt`, which applies the configured attack to each payload and
says how long to hold each message back (a slow node). In the Ray runtime this object lives in
its own actor, so one adversary coordinates every Byzantine node.

Omniscient attacks (ALIE, IPM, Mimic, the line searches) need the correct nodes' vectors of
the round. Correct nodes of the attacked role report their outgoing payloads with
:meth:`observe` (only when such an attack is configured); a Byzantine node's messages are
attacked once :meth:`ready` says every correct vector of the round was seen — or when the
runtime's bounded wait (``network.observe_timeout``) runs out, with what was seen so far. The
wait only ever delays Byzantine nodes: correct nodes never wait for the adversary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from byzsgd.aggregators import coordinate_median, make_aggregator
from byzsgd.attacks import ATTACKS, Attack, AttackContext, FlippedLabels
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import Experiment, RoleRoster, assemble, choose_byzantine
from byzsgd.messages import Message

__all__ = ["OBSERVED_ROUNDS", "FaultInjector", "Role", "choose_byzantine", "needs_adversary"]

OBSERVED_ROUNDS = 8  # rounds of observations kept per kind: bounds the adversary's memory


class Role:
    """The attack on one role (workers or servers), carried out by the roster's members."""

    def __init__(self, roster: RoleRoster, aggregate: Callable, quorum: int) -> None:
        self.roster = roster
        self.quorum = quorum  # how many of the role's vectors a correct receiver aggregates
        self.ids = roster.ids
        self.count = roster.count
        self.rotate_every = roster.rotate_every
        self.attack: Attack = ATTACKS.build(roster.attack.name, **roster.attack.params)
        self.aggregate = aggregate

    def members(self, round_: int | None = None) -> frozenset[str]:
        return self.roster.members(round_)

    @property
    def correct_count(self) -> int:
        return self.roster.correct_count


def needs_adversary(experiment: Experiment) -> bool:
    """Whether an omniscient attack runs: its Byzantine nodes then act through one injector
    (in the Ray runtime, an actor of its own)."""
    roles = (experiment.roster.workers, experiment.roster.servers)
    return any(role.count and ATTACKS.build(role.attack.name, **role.attack.params).omniscient for role in roles)


class FaultInjector:
    """The adversary of one run. Who is Byzantine comes from the plan's roster, so every
    process that builds an injector from the same plan agrees by construction."""

    def __init__(self, experiment: Experiment | ExperimentConfig) -> None:
        if isinstance(experiment, ExperimentConfig):  # a convenience for tests and notebooks
            experiment = assemble(experiment)
        config = experiment.config
        gradient_rule = make_aggregator(config.aggregator.name, f=config.nodes.f_w, **config.aggregator.params)
        self.seed = config.seed
        nodes = config.nodes
        self.workers = Role(experiment.roster.workers, gradient_rule, experiment.gradient_quorum)
        self.servers = Role(experiment.roster.servers, coordinate_median, nodes.n_ps - nodes.f_ps)
        self.byzantine = experiment.roster.byzantine
        self.observed: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self.colluded: dict[tuple[str, int], np.ndarray | None] = {}
        self.sent = 0

    def role(self, node_id: str) -> Role:
        return self.workers if node_id in self.workers.ids else self.servers

    def is_byzantine(self, node_id: str, round_: int | None = None) -> bool:
        """Whether ``node_id`` attacks at ``round_`` (None: at some round of the run)."""
        return node_id in self.role(node_id).members(round_)

    def observes(self, node_id: str) -> bool:
        """Whether the runtime must report this node's outgoing payloads to :meth:`observe`."""
        role = self.role(node_id)
        return role.attack.omniscient and (role.rotate_every is not None or not self.is_byzantine(node_id))

    def flips_labels(self, node_id: str) -> bool:
        return self.workers.attack.flips_labels and self.is_byzantine(node_id)

    def workload_for(self, node_id: str, workload: Any) -> Any:
        """The workload a node computes with: a label-flipping worker's flips its labels."""
        return FlippedLabels(workload) if self.flips_labels(node_id) else workload

    def observe(self, messages: list[Message]) -> None:
        """Record correct nodes' outgoing payloads (one per sender, kind and round)."""
        for message in messages:
            if self.is_byzantine(message.sender, message.round):
                continue
            key = (message.kind, message.round)
            self.observed.setdefault(key, {}).setdefault(message.sender, message.payload)
            self._forget_before(message.kind, message.round - OBSERVED_ROUNDS)

    def _forget_before(self, kind: str, round_: int) -> None:
        for store in (self.observed, self.colluded):
            for key in [k for k in store if k[0] == kind and k[1] < round_]:
                del store[key]

    def ready(self, messages: list[Message]) -> bool:
        """Whether the adversary has seen every correct vector it needs to attack ``messages``."""
        for message in messages:
            role = self.role(message.sender)
            if role.attack.omniscient and self.is_byzantine(message.sender, message.round):
                if len(self.observed.get((message.kind, message.round), {})) < role.correct_count:
                    return False
        return True

    def corrupt(self, messages: list[Message]) -> list[tuple[Message, float]]:
        """What the sender actually sends, each with its extra delay in network time units.
        A broadcast payload is attacked once, so its receivers see the same lie (unless the
        attack equivocates); an omniscient attack is computed once per kind and round, so all
        Byzantine nodes send the same vector (they collude)."""
        cache: dict[Any, np.ndarray | None] = {}
        out = []
        for message in messages:
            if not self.is_byzantine(message.sender, message.round):
                out.append((message, 0.0))
                continue
            role = self.role(message.sender)
            attack = role.attack
            context = self._context(message, role)
            store: dict[Any, np.ndarray | None] = cache
            if attack.per_receiver:
                key: Any = (id(message.payload), message.receiver)
            elif attack.omniscient:
                store, key = self.colluded, (message.kind, message.round)
            else:
                key = id(message.payload)
            if key not in store:
                store[key] = attack(message.payload, context)
            payload = store[key]
            if attack.omniscient:
                self._forget_before(message.kind, message.round - OBSERVED_ROUNDS)
            if payload is not None:
                if isinstance(payload, np.ndarray) and payload.dtype != message.payload.dtype:
                    # Attacks speak float32; a float64 channel (coded protocols) gets the lie in its own type.
                    payload = payload.astype(message.payload.dtype)
                out.append((replace(message, payload=payload), attack.hold(context)))
        return out

    def _context(self, message: Message, role: Role) -> AttackContext:
        self.sent += 1
        # The sender is part of the seed: injectors in different processes must not draw alike.
        rng = np.random.default_rng([self.seed, message.round, self.sent, *message.sender.encode()])
        observed = self.observed.get((message.kind, message.round), {}) if role.attack.omniscient else {}
        return AttackContext(
            message.sender,
            message.receiver,
            message.kind,
            message.round,
            rng,
            observed=dict(observed),
            n=len(role.ids),
            f=role.count,
            aggregate=lambda vectors: np.asarray(role.aggregate(vectors)),
            quorum=role.quorum,
        )
