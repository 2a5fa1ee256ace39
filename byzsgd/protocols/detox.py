"""DETOX and ByzShield (Konstantinidis & Ramamoorthy, MLSys 2021): majority votes over
redundant file gradients, then a robust rule over the file votes.

``detox.assignment`` picks who computes what (see :mod:`byzsgd.coding.assignments`):

* ``detox``: ``n_w / r`` disjoint groups of ``r = detox.replication`` workers, one file each;
* ``mols``: ByzShield's mutually orthogonal Latin squares, ``n_w = r l`` with ``l`` prime,
  ``l^2`` files, each worker holding ``l`` of them;
* ``ramanujan``: ByzShield's Ramanujan bigraph, ``s`` prime. Case 1 (m < s): ``n_w = r s`` with
  ``r < s``, ``s^2`` files, each worker holding ``s``. Case 2 (m >= s, s | m): ``n_w = s^2`` with
  ``r = s``, ``m s`` files, each worker holding ``m = detox.load`` (default ``s``).

Each worker sends its files' gradients, concatenated. The server takes each file's majority
and feeds the file votes to ``aggregator`` (median, multikrum, bulyan, bucketing, ctma, ...)
built for ``f = c_max(f_w)``, the most files ``f_w`` omniscient Byzantine workers can distort.
With ``detox.buckets: B`` the server first runs DETOX's hierarchical stage, as in the authors'
code: it shuffles the file votes (seeded, a fresh order every step), averages them in ``B``
buckets of (nearly) equal size and hands the ``B`` bucket means to the rule, still with
``f = c_max``: each distorted file spoils at most one bucket.
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
    load: int | None = None  # ramanujan case 2 (n_w = r^2) only: files per worker m, a multiple of r
    buckets: int | None = None  # DETOX's hierarchical stage: average the file votes in this many buckets
    adversary: Literal["worst_case", "random"] = "worst_case"  # who is Byzantine without attack.ids
    atol: float = 0.0  # max-abs distance under which copies count as equal (0: bitwise)
    window: int = 64


@functools.lru_cache(maxsize=32)
def build_assignment(kind: str, workers: int, r: int, load: int | None = None) -> Assignment:
    where = f"detox.assignment={kind} with nodes.n_w={workers}, detox.replication={r}"
    if r < 1 or workers % r:
        raise ConfigError(f"{where}: n_w must be a positive multiple of the replication r")
    if load is not None and (kind != "ramanujan" or r * r != workers):
        raise ConfigError(f"{where}: detox.load applies to the Ramanujan case 2 only (n_w = r^2)")
    try:
        if kind == "detox":
            return detox_assignment(workers, r)
        if kind == "mols":
            return mols_assignment(workers // r, r)  # n_w = r l
        side = workers // r
        if r < side:  # case 1: n_w = m s with m = r < s
            return ramanujan_assignment(r, side)
        if r == side:  # case 2: n_w = s^2 with s = r, m s files
            return ramanujan_assignment(r if load is None else load, r)
        raise ConfigError("the Ramanujan assignment needs r < n_w / r (case 1) or n_w = r^2 (case 2)")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def assignment_of(config: ExperimentConfig) -> Assignment:
    options = config.options
    return build_assignment(options.assignment, config.nodes.n_w, options.replication, options.load)


# (assignment, n_w, r, load, q) -> distortable(...): the search is exhaustive, so a run does it
# once, in the driver (Detox.derive), and the processes that build nodes adopt it (Detox.restore).
SEARCHED: dict[tuple[str, int, int, int | None, int], tuple[int, tuple[int, ...]]] = {}


def distortable(kind: str, workers: int, r: int, load: int | None, q: int) -> tuple[int, tuple[int, ...]]:
    """``(c_max(q), a worst-case worker set)`` for the assignment."""
    key = (kind, workers, r, load, q)
    if key not in SEARCHED:
        result = worst_case(build_assignment(kind, workers, r, load), q)
        SEARCHED[key] = result.count, result.workers
    return SEARCHED[key]


class FileVoteScheme(Scheme):
    def __init__(
        self, assignment: Assignment, dimension: int, rule: Any, atol: float, buckets: int | None = None, seed: int = 0
    ) -> None:
        self.assignment = assignment
        self.num_workers = assignment.num_workers
        self.num_partitions = assignment.num_files
        self.dimension = dimension
        self.message_size = assignment.load * dimension
        self.rule = rule
        self.atol = atol
        self.strict = assignment.replication // 2 + 1
        self.buckets = buckets
        self.shuffle = np.random.default_rng([seed, 2019])  # DETOX's bucket assignment, fresh each step

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
        if self.buckets is not None:
            order = self.shuffle.permutation(len(votes))
            votes = np.stack([votes[bucket].mean(axis=0) for bucket in np.array_split(order, self.buckets)])
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
        return distortable(options.assignment, config.nodes.n_w, options.replication, options.load, config.nodes.f_w)[0]

    def make_scheme(self, config: ExperimentConfig, dimension: int) -> Scheme:
        options = config.options
        rule = make_aggregator(config.aggregator.name, f=self.robust_f(config), **config.aggregator.params)
        return FileVoteScheme(assignment_of(config), dimension, rule, options.atol, options.buckets, config.seed)

    def check(self, config: ExperimentConfig) -> None:
        options = config.options
        if options.atol < 0:
            raise ConfigError(f"detox.atol={options.atol}: must be >= 0")
        files = assignment_of(config).num_files
        if options.buckets is not None and not 1 <= options.buckets <= files:
            raise ConfigError(f"detox.buckets={options.buckets}: must be between 1 and the {files} files")
        inputs, what = (files, "files") if options.buckets is None else (options.buckets, "buckets")
        f = self.robust_f(config)
        needed = AGGREGATORS[config.aggregator.name].min_inputs(f, **config.aggregator.params)
        if inputs < needed:
            raise ConfigError(
                f"aggregator.name={config.aggregator.name!r} must absorb c_max={f} distorted files among "
                f"{inputs} {what}, which needs {needed}: use fewer Byzantine workers, more workers or another rule"
            )

    def worst_case_workers(self, config: ExperimentConfig, count: int) -> list[int] | None:
        options = config.options
        if options.adversary != "worst_case":
            return None
        return list(distortable(options.assignment, config.nodes.n_w, options.replication, options.load, count)[1])

    def derive(self, config: ExperimentConfig) -> dict[str, Any]:
        options, n_w = config.options, config.nodes.n_w
        qs = {config.nodes.f_w, byzantine_count(config.attack, config.nodes.f_w)}
        keys = [(options.assignment, n_w, options.replication, options.load, q) for q in sorted(qs)]
        return {"distortable": {key: distortable(*key) for key in keys}}

    def restore(self, derived: dict[str, Any]) -> None:
        SEARCHED.update(derived.get("distortable", {}))

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        assignment = assignment_of(config)
        q = byzantine_count(config.attack, config.nodes.f_w)
        return {
            "assignment": assignment.name,
            "files": assignment.num_files,
            "load": assignment.load,
            "c_max": self.robust_f(config),
            "buckets": config.options.buckets,
            "eigenvalue_bound": round(eigenvalue_bound(assignment, config.nodes.f_w), 3),
            "distorted_files": len(assignment.distorted_files(self.worst_case_workers(config, q) or [])),
        }


register(Detox())
