"""The reproduction configs (experiments/papers): each expands into valid runs, and each runs
a step on tiny files in the official formats put where the config expects its data."""

import shutil
from pathlib import Path

import pytest

from byzsgd.runner import run_experiment
from byzsgd.sweep import load_sweep
from tests.test_workloads import tiny_cifar10, tiny_mnist

PAPERS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "papers").glob("*.yaml"))


def test_there_is_a_config_for_each_papers_main_setting():
    names = {p.stem for p in PAPERS}
    assert {
        "byzsgd_cifar10_cifarnet",
        "byzsgd_mnist",
        "byzshield_cifar10_resnet18_k15",
        "detox_cifar10_resnet18_k25",
        "ctma_mu2sgd_mnist",
    } <= names
    for path in PAPERS:
        header = path.read_text().split("\nname:")[0]
        assert "Reproduces:" in header and "Needs:" in header and "Time:" in header, path.name


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.stem)
def test_a_reproduction_config_runs_a_step_once_its_data_is_in_place(path, tmp_path):
    plan = load_sweep(path, out_dir=tmp_path / "sweep")
    assert len(plan.runs) >= 4
    config = plan.runs[-1].config  # the last variant: a baseline or the strongest attack
    data = tmp_path / "data"
    data.mkdir()
    if config.data.dataset == "cifar10":
        tiny_cifar10(data, per_batch=12)
    else:
        tiny_mnist(data, compress=True)
    overrides = {"runtime": "local", "device": "cpu", "steps": 1, "eval_every": 1}
    for key, value in overrides.items():
        setattr(config, key, value)
    config.data.root = str(data)
    config.data.batch_size = 2
    if config.model.name == "resnet18":  # 45 ResNet-18 gradients take a minute on 2 cores; the model
        config.model.name = "cnn"  # itself is tested in test_workloads
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["status"] == "finished" and [r["step"] for r in result.rows] == [0, 1]
    shutil.rmtree(data)
