"""The papers' workloads: MNIST and CIFAR-10 read from tiny files in the official formats,
CifarNet and ResNet-18, generated images, augmentation; the small built-ins are unchanged."""

import gzip
import math

import numpy as np
import pytest
import torch
from torch import nn

from byzsgd.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset
from byzsgd.models import build_model, cifarnet, resnet18
from byzsgd.registry import ConfigError
from byzsgd.training import Workload, crop_and_flip
from tests.conftest import make_config


def write_idx(path, array, compress):
    """An IDX file as MNIST ships it: 0x00 0x00 0x08 ndim, big-endian sizes, then bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def tiny_mnist(root, compress):
    """Twelve training and five test images in the official IDX files."""
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    labels = {"train": np.arange(12) % 10, "t10k": np.array([9, 0, 1, 2, 3])}
    for split in ("train", "t10k"):
        write_idx(root / f"{split}-images-idx3-ubyte", images[split], compress)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels[split], compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_the_official_idx_files(tmp_path, compress):
    images, labels = tiny_mnist(tmp_path, compress)
    data = load_dataset("mnist", root=str(tmp_path))
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.num_classes == 10
    assert np.allclose(data.x_train[3, 0], images["train"][3] / 255.0)
    assert data.y_train.tolist() == labels["train"].tolist() and data.y_test.tolist() == [9, 0, 1, 2, 3]


def tiny_cifar10(root, per_batch=4):
    """The binary version: per record one label byte, then 1024 red, 1024 green, 1024 blue bytes."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(2)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
        records[name] = (labels, pixels)
    return records


def test_cifar10_reads_the_official_binary_batches_as_plain_bytes(tmp_path):
    records = tiny_cifar10(tmp_path)
    data = load_dataset("cifar10", root=str(tmp_path))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.num_classes == 10
    labels, pixels = records["data_batch_2.bin"]
    assert data.y_train[4:8].tolist() == labels.tolist()
    green = pixels[1, 1024:2048].reshape(32, 32) / 255.0  # channel 1 of the second record of batch 2
    assert np.allclose(data.x_train[5, 1], (green - CIFAR10_MEAN[1]) / CIFAR10_STD[1], atol=1e-5)
    assert data.y_test.tolist() == records["test_batch.bin"][0].tolist()


def test_missing_data_files_say_where_to_put_them(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data.root: dataset 'cifar10' is read from local files.*cifar-10-batches-bin"
    ):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match=r"data.root: data_batch_1.bin is missing in .*cifar-10-binary.tar.gz"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"data.root: train-images-idx3-ubyte\[.gz\] is missing.*t10k-labels-idx1-ubyte"
    ):
        load_dataset("mnist", root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.root: '/no/such/folder' is not a folder"):
        load_dataset("mnist", root="/no/such/folder")
    with pytest.raises(ConfigError, match=r"data.params: dataset 'mnist'.*unexpected keyword argument 'size'"):
        make_config(data={"dataset": "mnist", "params": {"size": 3}})


def test_a_run_trains_on_tiny_cifar10_files_with_cifarnet_and_augmentation(tmp_path):
    tiny_cifar10(tmp_path)
    config = make_config(
        steps=2,
        eval_every=1,
        nodes={"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1},
        data={"dataset": "cifar10", "root": str(tmp_path), "batch_size": 2, "augment": True},
        model={"name": "cifarnet"},
    )
    workload = Workload(config)
    assert workload.dimension == 1_756_426  # 4,864 + 102,464 + 1,573,248 + 73,920 + 1,930
    gradient, loss = workload.gradient(workload.initial_vector(), np.array([0, 1]))
    assert gradient.shape == (workload.dimension,) and math.isfinite(loss)


def test_cifarnet_has_the_tf_slim_layers():
    model = cifarnet((3, 32, 32), 10)
    kinds = [type(m).__name__ for m in model if not isinstance(m, (nn.ReLU, nn.LocalResponseNorm, nn.Flatten))]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Linear", "Linear", "Linear"]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5)), (64, (5, 5))]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [384, 192, 10]


def test_resnet18_is_the_cifar_variant_with_11_2m_parameters():
    model = resnet18((3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ConfigError, match=r"resnet18 needs \(channels, height, width\) images"):
        resnet18((64,), 10)


def test_generated_images_of_any_shape_for_throughput_runs():
    data = load_dataset("synthetic", params={"shape": [3, 32, 32], "samples": 50, "classes": 4})
    assert data.input_shape == (3, 32, 32) and data.num_classes == 4 and len(data.x_train) == 40
    default = load_dataset("synthetic")
    assert default.input_shape == (1, 8, 8) and len(default.y_train) + len(default.y_test) == 2000


def test_the_small_built_in_models_are_built_as_before():
    """Same layers, same initialization order: the same seed gives the same starting model."""
    torch.manual_seed(3)
    built = build_model("mlp", (1, 8, 8), 10, hidden=64)
    torch.manual_seed(3)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), reference.parameters()))
    assert sum(p.numel() for p in build_model("cnn", (1, 8, 8), 10).parameters()) == 160 + 4640 + 1290


def test_crop_and_flip_keeps_content_shifted_or_mirrored():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = crop_and_flip(images, torch.Generator().manual_seed(0), padding=0)
    for original, augmented in zip(images, out):  # no padding: each image is itself or its mirror
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(2))
    shifted = crop_and_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    flat = make_config(data={"params": {"shape": [64]}, "augment": True}, model={"name": "logreg"})
    with pytest.raises(
        ConfigError, match=r"data.augment: crops and flips images; synthetic has inputs of shape \(64,\)"
    ):
        Workload(flat)
