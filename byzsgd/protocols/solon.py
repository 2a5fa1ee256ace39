"""Solon (Chen et al., arXiv 2110.01595): DRACO-style exact sums with compressed messages.

``n_w`` workers in groups of ``r = solon.load`` (default ``2 f_w + r_c``); every worker of a
group computes the group's ``r`` partitions and sends one coded chunk of ``d / r_c`` numbers,
``r_c = solon.compression``. The server locates up to ``s = f_w`` corrupted messages per group
and decodes the exact gradient sum; it needs ``r >= 2 s + r_c``. A message is the coded chunk's
``d / r_c`` numbers (complex values as real, imaginary pairs) as float32, ``4 d / r_c`` bytes
against the ``4 d`` of a float32 gradient: an ``r_c``-fold saving per message over the parameter
server (``summary.message_bytes``). Workers encode and the server decodes in float64; the
decoder's consistency check then allows float32 rounding (relative residual ``WIRE_RTOL``), so
the decoded sum matches the float64 one to about 1e-7 relative, and a forged message within
that tolerance of a codeword moves it by as little. The mathematics lives in
:mod:`byzsgd.coding.solon`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from byzsgd.coding import DecodingError, SolonCode
from byzsgd.config import ExperimentConfig
from byzsgd.protocols.base import register
from byzsgd.protocols.coded import CodedProtocol, NotDecodable, Scheme
from byzsgd.registry import ConfigError


@dataclass
class SolonOptions:
    compression: int = 2  # r_c: a message carries d / r_c numbers
    load: int | None = None  # r: partitions per worker; default 2 f_w + r_c
    window: int = 64


# float32 rounding leaves honest messages ~1e-7 (relative) off a codeword; 1e-5 keeps a margin.
WIRE_RTOL = 1e-5


class SolonScheme(Scheme):
    dtype = np.dtype(np.float32)
    retry_each_arrival = False

    def __init__(self, code: SolonCode) -> None:
        self.code = code
        self.num_workers = code.n
        self.num_partitions = code.num_partitions
        self.message_size = code.message_size

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        return self.code.partitions_of(worker)

    def encode(self, worker: int, gradients: np.ndarray) -> np.ndarray:
        return self.code.encode(worker, gradients).astype(np.float32)

    def aggregate(self, received: dict[int, np.ndarray], complete: bool) -> np.ndarray:
        try:
            return self.code.decode(received, mean=True)
        except DecodingError as error:
            raise NotDecodable(str(error)) from None


def solon_load(config: ExperimentConfig) -> int:
    options = config.options
    return options.load if options.load is not None else 2 * config.nodes.f_w + options.compression


class Solon(CodedProtocol):
    name = "solon"
    options = SolonOptions
    uses_aggregator = False  # the exact sum is decoded: no robust rule

    def make_scheme(self, config: ExperimentConfig, dimension: int) -> Scheme:
        options, nodes = config.options, config.nodes
        try:
            load, compression = solon_load(config), options.compression
            code = SolonCode(nodes.n_w, nodes.f_w, load, compression, dimension, seed=config.seed, rtol=WIRE_RTOL)
        except ConfigError as error:
            raise ConfigError(
                f"solon (nodes.n_w={nodes.n_w}, nodes.f_w={nodes.f_w}, solon.load={solon_load(config)}, "
                f"solon.compression={options.compression}): {error}"
            ) from None
        return SolonScheme(code)

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"load": solon_load(config), "compression": config.options.compression}


register(Solon())
