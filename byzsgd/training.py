"""The learning task every protocol shares: data, model, gradients and evaluation.

Protocol nodes see only flat vectors; a :class:`Workload` turns a vector and a batch into a
loss and a gradient. Each node (or Ray actor) builds its own from the config.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from byzsgd.config import ExperimentConfig
from byzsgd.data import BatchSampler, batch_size_of, load_dataset, partition
from byzsgd.models import build_model, check_output, get_vector, grad_vector, set_vector
from byzsgd.registry import ConfigError

EVAL_CHUNK = 4096  # test samples per forward pass when evaluating (bounds memory on large models)


def actor_device(requested: str, gpu_ids: list[Any]) -> str:
    """A Ray actor's device: the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES to it, so it is
    ``cuda:0`` inside the actor), else the CPU. An actor Ray gave no GPU never touches CUDA, even
    on a GPU machine: Ray 2.60 does not hide the GPUs from it, and it would take the first one
    outside Ray's accounting."""
    return "cuda:0" if gpu_ids and requested != "cpu" else "cpu"


def check_device(name: str) -> None:
    """The driver's check before it writes anything: it evaluates on this device itself."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: torch sees no CUDA device on this machine (use device: auto or cpu)")


def check_driver_device(config: ExperimentConfig) -> None:
    """In the in-process runtime the driver computes on ``config.device`` itself; on Ray it
    evaluates on the CPU and the actors use the GPUs Ray assigns them (checked at start-up)."""
    if config.runtime == "local":
        check_device(config.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name.split(":")[0])  # cuda:0, the GPU Ray assigned an actor, needs CUDA too
    return torch.device(name)


class Workload:
    def __init__(self, config: ExperimentConfig, device: str | None = None) -> None:
        """``device`` overrides ``config.device`` (a Ray actor passes the one Ray assigned it)."""
        self.config = config
        self.device = resolve_device(device or config.device)
        data, model = config.data, config.model
        self.data = load_dataset(data.dataset, data.test_fraction, config.seed, data.root, data.params)
        torch.manual_seed(config.seed)  # every correct server starts from the same model
        self.model = build_model(model.name, self.data.input_shape, self.data.num_classes, model.hidden, model.params)
        self.model.to(self.device)
        sample = torch.from_numpy(self.data.x_train[:2]).to(self.device)
        check_output(self.model, model.name, sample, self.data.num_classes)
        # Random crop and flip of training batches (seeded per process); off by default.
        if data.augment and len(self.data.input_shape) != 3:
            raise ConfigError(f"data.augment: crops and flips images; {data.dataset} has inputs of shape "
                              f"{self.data.input_shape}")
        self.augment = torch.Generator().manual_seed(config.seed) if data.augment else None
        self._x_train = torch.from_numpy(self.data.x_train).to(self.device)
        self._y_train = torch.from_numpy(self.data.y_train).to(self.device)
        self._x_test = torch.from_numpy(self.data.x_test).to(self.device)
        self._y_test = torch.from_numpy(self.data.y_test).to(self.device)
        self._initial = get_vector(self.model).clone()

    @property
    def dimension(self) -> int:
        return self._initial.numel()

    def initial_vector(self) -> torch.Tensor:
        return self._initial.clone()

    def shards(self) -> list[np.ndarray]:
        data = self.config.data
        return partition(self.data.y_train, self.config.nodes.n_w, data.partition, data.alpha, self.config.seed)

    def sampler(self, worker_index: int) -> BatchSampler:
        seed = self.config.seed * 1_000_003 + worker_index
        size = batch_size_of(self.config.data, worker_index, self.config.nodes.n_w)  # each worker its own batch
        return BatchSampler(self.shards()[worker_index], size, seed)

    def gradient(
        self, vector: torch.Tensor, batch: np.ndarray, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """The loss gradient at ``vector`` on the training samples ``batch``; ``labels`` replaces
        the training labels (a label-flipping worker's)."""
        set_vector(self.model, vector)
        self.model.zero_grad(set_to_none=False)
        index = torch.from_numpy(batch).to(self.device)
        inputs = self._x_train[index]
        if self.augment is not None:
            inputs = crop_and_flip(inputs, self.augment)
        labels = self._y_train if labels is None else labels
        loss = F.cross_entropy(self.model(inputs), labels[index])
        loss.backward()
        return grad_vector(self.model), float(loss.detach())  # a fresh tensor: torch.cat copies

    @torch.no_grad()
    def evaluate(self, vector: torch.Tensor) -> dict[str, float]:
        set_vector(self.model, vector)
        logits = torch.cat([self.model(chunk) for chunk in self._x_test.split(EVAL_CHUNK)])
        eval_count = min(self.config.data.eval_samples, len(self._y_train))
        train_logits = self.model(self._x_train[:eval_count])
        return {
            "test_acc": float((logits.argmax(1) == self._y_test).float().mean()),
            "test_loss": float(F.cross_entropy(logits, self._y_test)),
            "train_loss": float(F.cross_entropy(train_logits, self._y_train[:eval_count])),
        }


def crop_and_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The usual CIFAR augmentation: each (n, c, h, w) image shifted by a random crop of its
    zero-padded copy and mirrored with probability 1/2."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    cols = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.stack([padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(zip(rows, cols))])
    flipped = torch.tensor(flips, device=images.device)
    return torch.where(flipped[:, None, None, None], out.flip(3), out)
