"""Solon: exact Byzantine-resilient gradient sums with compressed messages.

Chen, Chen, Wang, Davidson, Dobriban, "Solon: Communication-efficient Byzantine-resilient
Distributed Training via Redundant Gradients" (arXiv 2110.01595). The paper's trade-off: with
computational load ``r`` (gradients per node), messages of ``d / r_c`` numbers and ``s``
Byzantine nodes, the exact gradient sum is recoverable iff ``r >= 2s + r_c``. Why that bound is
necessary: only the ``r`` nodes holding a partition carry information about its gradient,
``r d / r_c`` numbers in all; ``2s`` of them can be spent confusing the server, and the other
``r - 2s`` must still carry ``d`` numbers.

What is implemented (the stored copy of the paper available here held only its abstract, so
this is our construction meeting the stated guarantee, in the paper's spirit: coding plus
sparse recovery of the corrupted nodes):

* ``n`` nodes in ``n / r`` groups of ``r`` consecutive nodes; the nodes of group ``g`` all
  compute the same ``r`` partitions ``g r .. g r + r - 1``, so each node's load is ``r`` and
  every partition is computed ``r`` times.
* A node sums its ``r`` gradients into the group gradient ``h`` (length ``d``), packs pairs of
  reals into complex numbers (``z = h[:d/2] + i h[d/2:]``), cuts ``z`` into ``r_c`` chunks of
  ``d / (2 r_c)`` complex numbers and sends one coded chunk: row ``j`` of ``C[:, :r_c] Z`` for
  the ``r x r`` unitary DFT ``C``. That is ``d / r_c`` real numbers (two per complex value);
  the packing is why complex coding costs no extra communication.
* Per group the messages are a length-``r`` DFT code of dimension ``r_c`` with ``r - r_c >= 2s``
  parity checks, so the server locates up to ``s`` corrupted nodes in every group from the
  syndromes (the sparse-recovery step), decodes the chunks exactly and sums over groups.

When ``2 r_c`` does not divide ``d`` the group gradient is zero-padded, so messages have
``2 ceil(d / (2 r_c))`` numbers (:attr:`SolonCode.message_size`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from byzsgd.coding.dft import DecodingError, DFTCode
from byzsgd.registry import ConfigError


class SolonCode:
    """Solon encoding/decoding for ``n`` nodes, ``s`` adversaries, load ``r``, compression
    ``r_c`` and gradient dimension ``dim``.

    Workers call :meth:`partitions_of` and :meth:`encode`; the server calls :meth:`decode`
    with an ``n x message_size`` array or a mapping node -> message (absent nodes and
    non-finite messages are erasures). Decoding runs in float64 whatever the messages' dtype;
    messages sent as float32 need ``rtol`` about 1e-5 (the protocol's choice).
    """

    def __init__(
        self, n: int, s: int, r: int, r_c: int, dim: int, *, seed: int = 0, rtol: float = 1e-9
    ) -> None:
        for name, value in (("n", n), ("s", s), ("r", r), ("r_c", r_c), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"Solon needs an integer {name}, got {value!r}")
        if s < 0 or r_c < 1 or dim < 1:
            raise ConfigError(
                f"Solon needs s >= 0, r_c >= 1 and dim >= 1 (s={s}, r_c={r_c}, dim={dim})"
            )
        if r < 2 * s + r_c:
            raise ConfigError(
                f"Solon needs load r >= 2s + r_c = {2 * s + r_c} to tolerate s={s} with"
                f" compression r_c={r_c}, got r={r}"
            )
        if n < r or n % r:
            raise ConfigError(f"Solon groups r={r} nodes together: n={n} must be a multiple of r")
        self.n, self.s, self.r, self.r_c, self.dim = int(n), int(s), int(r), int(r_c), int(dim)
        self._chunk = -(-self.dim // (2 * self.r_c))  # complex numbers per message
        self._code = DFTCode(self.r, self.r_c, seed=seed, rtol=rtol)

    @property
    def num_groups(self) -> int:
        return self.n // self.r

    @property
    def num_partitions(self) -> int:
        return self.n

    @property
    def message_size(self) -> int:
        """Real numbers per message: ``dim / r_c`` (rounded up to an even count)."""
        return 2 * self._chunk

    def group_of(self, node: int) -> int:
        if not 0 <= node < self.n:
            raise ValueError(f"no node {node} among {self.n}")
        return node // self.r

    def partitions_of(self, node: int) -> tuple[int, ...]:
        """The ``r`` partitions ``node`` computes (its group's), in encode order."""
        first = self.group_of(node) * self.r
        return tuple(range(first, first + self.r))

    def encode(self, node: int, grads: np.ndarray) -> np.ndarray:
        """The float64 message (length :attr:`message_size`) from the ``(r, dim)`` gradients
        of ``partitions_of(node)``."""
        g = np.asarray(grads, dtype=np.float64)
        if g.shape != (self.r, self.dim):
            raise ValueError(f"node {node} needs an ({self.r}, {self.dim}) array of gradients")
        chunks = self._pack(g.sum(axis=0))
        row = self._code.generator[node - self.group_of(node) * self.r]
        return np.ascontiguousarray(row @ chunks).view(np.float64)

    def decode(
        self, received: np.ndarray | Mapping[int, np.ndarray], *, mean: bool = False
    ) -> np.ndarray:
        """The exact sum (or mean) of the ``n`` partition gradients."""
        return self.decode_and_locate(received, mean=mean)[0]

    def decode_and_locate(
        self, received: np.ndarray | Mapping[int, np.ndarray], *, mean: bool = False
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """Like :meth:`decode`, also returning the nodes found corrupted or missing."""
        rows, missing = self._rows(received)
        total = np.zeros(self.dim)
        dropped: list[int] = []
        for group in range(self.num_groups):
            first = group * self.r
            members = range(first, first + self.r)
            erased = [j - first for j in members if j in missing]
            try:
                chunks, bad = self._code.decode(rows[first : first + self.r], erasures=erased)
            except DecodingError as error:
                raise DecodingError(
                    f"Solon group {group} (nodes {first}..{first + self.r - 1}): {error}"
                ) from None
            total += self._unpack(chunks)
            dropped.extend(first + j for j in bad)
        return (total / self.n if mean else total), tuple(dropped)

    # -- internals -------------------------------------------------------------------------

    def _pack(self, vector: np.ndarray) -> np.ndarray:
        padded = np.zeros(2 * self.r_c * self._chunk)
        padded[: self.dim] = vector
        half = self.r_c * self._chunk
        return (padded[:half] + 1j * padded[half:]).reshape(self.r_c, self._chunk)

    def _unpack(self, chunks: np.ndarray) -> np.ndarray:
        flat = chunks.reshape(-1)
        return np.concatenate([flat.real, flat.imag])[: self.dim]

    def _rows(self, received: np.ndarray | Mapping[int, np.ndarray]) -> tuple[np.ndarray, set[int]]:
        """Messages as an ``n x chunk`` complex array; absent or malformed ones are missing."""
        if isinstance(received, Mapping):
            items = {int(k): np.asarray(v) for k, v in received.items()}
        else:
            array = np.asarray(received)
            if array.ndim != 2 or array.shape[0] != self.n:
                raise ValueError(
                    f"received must be an ({self.n}, {self.message_size}) array or a mapping"
                )
            items = dict(enumerate(array))
        rows = np.zeros((self.n, self._chunk), dtype=np.complex128)
        present: set[int] = set()
        for k, v in items.items():
            if not 0 <= k < self.n:
                raise ValueError(f"no node {k} among {self.n}")
            if v.shape == (self.message_size,):
                rows[k] = np.ascontiguousarray(v, dtype=np.float64).view(np.complex128)
                present.add(k)
        return rows, set(range(self.n)) - present
