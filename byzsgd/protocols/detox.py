"""DETOX and ByzShield (Konstantinidis & Ramamoorthy, MLSys 2021): majority votes over
redundant file gradients, then a robust rule over the file votes.

``detox.assignment`` picks who computes what (see :mod:`byzsgd.coding.assignments`):

* ``detox``: ``n_w / r`` disjoint groups of ``r = detox.replication`` workers, one file each;
* ``mols``: ByzShield's mutually orthogonal Latin squares, ``n_w = r l`` with ``l`` prime,
  ``l^2`` files, each worker holding ``l`` of them;
* ``ramanujan``: ByzShield's Ramanujan bigraph (case m < s), ``n_w = r s`` with ``s`` prime and
  ``r < s``, ``s^2`` files.

Each worker sends its files' gradients, concatenated. The server takes each file's majority
and feeds the file votes to ``aggregator`` (median, multikrum, bulyan, bucketing, ctma, ...)
built for ``f = c_max(f_w)``, the most files ``f_w`` omniscient Byzantine workers can distort.
With ``detox.adversary: worst_case`` (default) and no ``attack.ids``, the Byzantine workers are
exactly such a worst-case set.

When the server may step: a file is *decided* when one copy holds a strict majority of the
file's ``r`` holders (honest-majority files always get there; a Byzantine winner needs a
distortable file, which ``c_max`` accounts for). The server steps once every file is decided,
or once every worker has been heard from (then each file takes its plurality). A Byzantine
group that stays silent therefore stalls DETOX, as in the synchronous papers, where a timeout
would end the round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from byzsgd.aggregators import AGGREGATORS, make_aggregator
from byzsgd.coding import (
    Assignment,
    DecodingError,
    detox_assignment,
    eigenvalue_bound,
    majority,
    mols_assignment,
    ramanujan_assignment,
    worst_case,
)
from byzsgd.config import ExperimentConfig, byzantine_count
from byzsgd.protocols.base import register
from byzsgd.protocols.coded import CodedProtocol, NotDecodable, Scheme
from byzsgd.registry import ConfigError


@dataclass
class DetoxOptions:
    assignment: Literal["detox", "mols", "ramanujan"] = "detox"
    replication: int = 3  # r: workers per file
    adversary: Literal["worst_case", "random"] = "worst_case"  # who is Byzantine without attack.ids
    atol: float = 0.0  # max-abs distance under which copies count as equal (0: bitwise)
    window: int = 64


@functools.lru_cache(maxsize=32)
def build_assignment(kind: str, workers: int, r: int) -> Assignment:
    where = f"detox.assignment={kind} with nodes.n_w={workers}, detox.replication={r}"
    if r < 1 or workers % r:
        raise ConfigError(f"{where}: n_w must be a positive multiple of the replication r")
    try:
        if kind == "detox":
            return detox_assignment(workers, r)
        if kind == "mols":
            return mols_assignment(workers // r, r)  # n_w = r l
        side = workers // r  # ramanujan case 1: n_w = m s with m = r < s
        if r >= side:
            raise ConfigError(f"the Ramanujan assignment needs r < n_w / r (got s = n_w / r = {side})")
        return ramanujan_assignment(r, side)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


# (assignment, n_w, r, q) -> distortable(...): the search is exhaustive, so a run does it once,
# in the driver (Detox.derive), and the processes that build nodes adopt it (Detox.restore).
SEARCHED: dict[tuple[str, int, int, int], tuple[int, tuple[int, ...]]] = {}


def distortable(kind: str, workers: int, r: int, q: int) -> tuple[int, tuple[int, ...]]:
    """``(c_max(q), a worst-case worker set)`` for the assignment."""
    key = (kind, workers, r, q)
    if key not in SEARCHED:
        result = worst_case(build_assignment(kind, workers, r), q)
        SEARCHED[key] = result.count, result.workers
    return SEARCHED[key]


class FileVoteScheme(Scheme):
    def __init__(self, assignment: Assignment, dimension: int, rule: Any, atol: float) -> None:
        self.assignment = assignment
        self.num_workers = assignment.num_workers
        self.num_partitions = assignment.num_files
        self.dimension = dimension
        self.message_size = assignment.load * dimension
        self.rule = rule
        self.atol = atol
        self.strict = assignment.replication // 2 + 1

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        return self.assignment.files_of(worker)

    def encode(self, worker: int, gradients: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(gradients, dtype=np.float32).reshape(-1)

    def aggregate(self, received: dict[int, np.ndarray], complete: bool) -> np.ndarray:
        rows = {k: v.reshape(-1, self.dimension) for k, v in received.items()}
        try:
            votes = self.assignment.majority_vote(rows, atol=self.atol, min_votes=1 if complete else self.strict)
        except DecodingError as error:
            if not complete:
                raise NotDecodable(str(error)) from None
            votes = self._votes_with_gaps(rows)
        return np.asarray(self.rule(votes))

    def _votes_with_gaps(self, rows: dict[int, np.ndarray]) -> np.ndarray:
        """Plurality per file; a file nobody validly sent becomes a NaN row, which the rule
        drops and counts against its f."""
        votes = np.full((self.num_partitions, self.dimension), np.nan, dtype=np.float32)
        for file in range(self.num_partitions):
            holders = [k for k in self.assignment.workers_of(file) if k in rows]
            copies = [rows[k][self.assignment.files_of(k).index(file)] for k in holders]
            if copies:
                votes[file] = majority(copies, atol=self.atol)[0]
        return votes


class Detox(CodedProtocol):
    name = "detox"
    options = DetoxOptions

    def robust_f(self, config: ExperimentConfig) -> int:
        options = config.options
        return distortable(options.assignment, config.nodes.n_w, options.replication, config.nodes.f_w)[0]

    def make_scheme(self, config: ExperimentConfig, dimension: int) -> Scheme:
        options = config.options
        assignment = build_assignment(options.assignment, config.nodes.n_w, options.replication)
        rule = make_aggregator(config.aggregator.name, f=self.robust_f(config), **config.aggregator.params)
        return FileVoteScheme(assignment, dimension, rule, options.atol)

    def check(self, config: ExperimentConfig) -> None:
        options = config.options
        if options.atol < 0:
            raise ConfigError(f"detox.atol={options.atol}: must be >= 0")
        files = build_assignment(options.assignment, config.nodes.n_w, options.replication).num_files
        f = self.robust_f(config)
        needed = AGGREGATORS[config.aggregator.name].min_inputs(f, **config.aggregator.params)
        if files < needed:
            raise ConfigError(
                f"aggregator.name={config.aggregator.name!r} must absorb c_max={f} distorted files of "
                f"{files}, which needs {needed} files: use fewer Byzantine workers, more workers or another rule"
            )

    def worst_case_workers(self, config: ExperimentConfig, count: int) -> list[int] | None:
        options = config.options
        if options.adversary != "worst_case":
            return None
        return list(distortable(options.assignment, config.nodes.n_w, options.replication, count)[1])

    def derive(self, config: ExperimentConfig) -> dict[str, Any]:
        options, n_w = config.options, config.nodes.n_w
        qs = {config.nodes.f_w, byzantine_count(config.attack, config.nodes.f_w)}
        keys = [(options.assignment, n_w, options.replication, q) for q in sorted(qs)]
        return {"distortable": {key: distortable(*key) for key in keys}}

    def restore(self, derived: dict[str, Any]) -> None:
        SEARCHED.update(derived.get("distortable", {}))

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        options = config.options
        assignment = build_assignment(options.assignment, config.nodes.n_w, options.replication)
        q = byzantine_count(config.attack, config.nodes.f_w)
        return {
            "assignment": assignment.name,
            "files": assignment.num_files,
            "load": assignment.load,
            "c_max": self.robust_f(config),
            "eigenvalue_bound": round(eigenvalue_bound(assignment, config.nodes.f_w), 3),
            "distorted_files": len(assignment.distorted_files(self.worst_case_workers(config, q) or [])),
        }


register(Detox())
