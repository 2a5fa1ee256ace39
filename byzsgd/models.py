"""Models by name (``model.name``), and flat-vector views of their parameters.

Built-in: ``logreg``, ``mlp`` (one hidden layer of ``model.hidden`` units), ``cnn`` (two small
convolutions) for the small offline datasets; ``cifarnet`` and ``resnet18`` for CIFAR-10. A name
``"pkg.module:factory"`` names the user's own: ``factory(input_shape, num_classes, **model.params)``
returning a ``torch.nn.Module`` that maps a (batch, *input_shape) float tensor to (batch, num_classes) logits.

Models travel between nodes as flat float32 vectors of their parameters; these helpers are the one
place that converts between a module's parameters and such a vector. Buffers (batch-norm running
statistics) are not part of the vector: each process keeps its own, so the workload uses batch
statistics (the modules stay in training mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from byzsgd.plugins import check_call, is_import_path, resolve_callable
from byzsgd.registry import ConfigError, Registry

BUILTIN_MODELS = ("logreg", "mlp", "cnn", "cifarnet", "resnet18")  # in the order the docs list them


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Logistic regression: one linear layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> nn.Module:
    """One hidden layer of model.hidden ReLU units."""
    features = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 convolutions (16 and 32 channels), max-pool, 2x2 average pool, one linear layer."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4, num_classes),
    )


def cifarnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """TF-slim's CifarNet, the ByzSGD experiments' CIFAR-10 model (1.76M parameters on 32x32x3).

    conv 5x5x64, max-pool 2x2, LRN, conv 5x5x64, LRN, max-pool 2x2, fc 384, fc 192, fc
    num_classes. Ours: no dropout before fc 192 (slim's keep_prob=0.5), because the workload
    evaluates the model in training mode. TF's LRN (depth_radius 4, alpha 0.001/9) is torch's
    LocalResponseNorm(9, alpha=0.001)."""
    channels, height, width = _image_shape(input_shape, "cifarnet")
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.Conv2d(64, 64, 5, padding=2),
        nn.ReLU(),
        nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(flat, 384),
        nn.ReLU(),
        nn.Linear(384, 192),
        nn.ReLU(),
        nn.Linear(192, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (DETOX/ByzShield's CIFAR-10 model): 3x3 stem with stride 1 and no
    max-pool, four stages of two basic blocks (64, 128, 256, 512 channels), global average pool,
    one linear layer: 11.17M parameters for 10 classes."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, inputs = [], 64
        for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool): 11.17M parameters for 10 classes."""
    channels, _, _ = _image_shape(input_shape, "resnet18")
    return ResNet18(channels, num_classes)


def _image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: {name} needs (channels, height, width) images, got inputs {input_shape}")
    return input_shape  # type: ignore[return-value]


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
for _factory in (logreg, mlp, cnn, cifarnet, resnet18):
    MODELS.register(_factory.__name__)(_factory)


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory ``model.name`` names: a built-in or ``pkg.module:factory``."""
    if is_import_path(name):
        return resolve_callable(name, "model.name")
    if name not in MODELS:
        raise ConfigError(
            f"model.name: unknown model {name!r}; known: {', '.join(BUILTIN_MODELS)}, or pkg.module:factory (your own)"
        )
    return MODELS[name]


def model_params(name: str, hidden: int, params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the factory gets: ``model.params``, plus ``model.hidden`` for mlp."""
    return {"hidden": hidden, **params} if name == "mlp" else dict(params)


def check_model(name: str, hidden: int, params: dict[str, Any]) -> None:
    """Config-time check: the factory exists and accepts (input_shape, num_classes, **params)."""
    factory = model_factory(name)
    check_call(factory, "model.params", "model factory", (1, 8, 8), 10, **model_params(name, hidden, params))


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, params: dict[str, Any] | None = None
) -> nn.Module:
    factory = model_factory(name)
    kwargs = model_params(name, hidden, params or {})
    check_call(factory, "model.params", "model factory", input_shape, num_classes, **kwargs)
    try:
        model = factory(input_shape, num_classes, **kwargs)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - user code: say which field led here
        raise ConfigError(f"model.name: {name} failed to build for inputs {input_shape}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name} returned {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.name: {name} has no trainable parameters")
    return model


def check_output(model: nn.Module, name: str, sample: torch.Tensor, num_classes: int) -> None:
    """ConfigError unless ``model`` maps a batch to (batch, num_classes) logits (one no-grad forward)."""
    with torch.no_grad():
        try:
            out = model(sample)
        except Exception as error:  # noqa: BLE001
            raise ConfigError(
                f"model.name: {name} fails on a batch of shape {tuple(sample.shape)}: {type(error).__name__}: {error}"
            ) from error
    expected = (sample.shape[0], num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model.name: {name} outputs {got} for a batch of shape {tuple(sample.shape)}; "
            f"expected {expected} (one logit per class: the dataset has {num_classes} classes)"
        )


def get_vector(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def set_vector(model: nn.Module, vector: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(vector, model.parameters())


def grad_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])
