"""Solon (Chen et al., arXiv 2110.01595): DRACO-style exact sums with compressed messages.

``n_w`` workers in groups of ``r = solon.load`` (default ``2 f_w + r_c``); every worker of a
group computes the group's ``r`` partitions and sends one coded chunk of ``d / r_c`` numbers,
``r_c = solon.compression``. The server locates up to ``s = f_w`` corrupted messages per group
and decodes the exact gradient sum; it needs ``r >= 2 s + r_c``. Messages travel as float64
(complex pairs), so a message is ``8 d / r_c`` bytes against the ``4 d`` of a float32 gradient:
a ``r_c / 2``-fold saving per message over the parameter server (``summary.message_bytes``).
The mathematics lives in :mod:`byzsgd.coding.solon`.
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


class SolonScheme(Scheme):
    dtype = np.dtype(np.float64)
    retry_each_arrival = False

    def __init__(self, code: SolonCode) -> None:
        self.code = code
        self.num_workers = code.n
        self.num_partitions = code.num_partitions
        self.message_size = code.message_size

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        return self.code.partitions_of(worker)

    def encode(self, worker: int, gradients: np.ndarray) -> np.ndarray:
        return self.code.encode(worker, gradients)

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

    def make_scheme(self, config: ExperimentConfig, dimension: int) -> Scheme:
        options, nodes = config.options, config.nodes
        try:
            code = SolonCode(nodes.n_w, nodes.f_w, solon_load(config), options.compression, dimension, seed=config.seed)
        except ConfigError as error:
            raise ConfigError(
                f"solon (nodes.n_w={nodes.n_w}, nodes.f_w={nodes.f_w}, solon.load={solon_load(config)}, "
                f"solon.compression={options.compression}): {error}"
            ) from None
        return SolonScheme(code)

    def describe(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"load": solon_load(config), "compression": config.options.compression}


register(Solon())
