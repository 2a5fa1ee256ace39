"""benchmarks/gpu_check.py, the script a GPU machine runs: its verdicts, its refusal without a GPU,
and its checks run end to end on the CPU (--dry-run), as CI can."""

import importlib.util
import types
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def fake_run(summary, accuracies=(0.1, 0.9)):
    rows = [{"test_acc": accuracy} for accuracy in accuracies]
    return lambda settings, folder: types.SimpleNamespace(summary=summary, rows=rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert gpu_check.main([]) == 2
    assert "sees no CUDA device: nothing to check here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "devices,roles,problem",
    [
        ({"w0": "cuda:0", "ps0": "cuda:0"}, ["workers", "servers"], None),
        ({"w0": "cuda:0", "ps0": "cpu"}, ["workers"], None),
        ({"w0": "cpu", "ps0": "cpu"}, ["workers"], "{'w0': 'cpu'}"),  # a worker Ray gave no GPU
        ({"w0": "cuda:0", "ps0": "cuda:0"}, ["workers"], "{'ps0': 'cuda:0'}"),  # a server on a GPU it never asked for
    ],
)
def test_the_ray_check_wants_gpu_roles_on_cuda_and_the_rest_on_the_cpu(monkeypatch, tmp_path, devices, roles, problem):
    monkeypatch.setattr(gpu_check, "run", fake_run({"devices": devices}))
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 1)
    verdict = gpu_check.check_on_ray(tmp_path, 5, roles, gpu=True)
    assert verdict is None if problem is None else problem in verdict


@pytest.mark.parametrize(
    "device,accuracies,problem",
    [
        ("cuda", (0.1, 0.8), None),
        ("cpu", (0.1, 0.8), "summary.json says device 'cpu', not cuda"),
        ("cuda", (0.1, 0.25), "test accuracy did not rise: 0.100 -> 0.250"),
    ],
)
def test_the_in_process_check_wants_cuda_and_learning(monkeypatch, tmp_path, device, accuracies, problem):
    monkeypatch.setattr(gpu_check, "run", fake_run({"device": device}, accuracies))
    assert gpu_check.check_in_process(tmp_path, 5, gpu=True) == problem


@pytest.mark.slow
def test_dry_run_trains_in_process_on_the_cpu(tmp_path):
    assert gpu_check.check_in_process(tmp_path, 30, gpu=False) is None


@pytest.mark.slow
def test_dry_run_on_ray_puts_every_node_on_the_cpu(ray_cluster, tmp_path):
    assert gpu_check.check_on_ray(tmp_path, 3, ["workers"], gpu=False) is None


@pytest.mark.parametrize("roles,actors", [(["workers", "servers"], 12), (["workers"], 7)])
def test_the_ray_check_asks_for_no_more_than_one_gpu_holds(monkeypatch, tmp_path, roles, actors):
    from byzsgd.api import make_config
    from byzsgd.runtime.cluster import check_cluster_gpus

    seen = {}

    def capture(settings, folder):
        seen.update(settings)
        return fake_run({"devices": {}})(settings, folder)

    monkeypatch.setattr(gpu_check, "run", capture)
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 1)
    gpu_check.check_on_ray(tmp_path, 5, roles, gpu=True)
    config = make_config({**gpu_check.BYZSGD, **seen})
    check_cluster_gpus(config, actors, {"GPU": 1.0, "CPU": 16.0})  # the start-up refusal, on one GPU
    assert 0 < seen["ray"]["num_gpus_per_actor"] * actors <= 1


@pytest.mark.parametrize("gpus", [1, 2, 3, 8])
@pytest.mark.parametrize("actors", [1, 2, 3, 7, 12, 40])
def test_an_equal_gpu_share_fits_and_is_what_ray_takes(gpus, actors):
    from benchmarks.overhead import gpu_share
    from byzsgd.api import make_config
    from byzsgd.runtime.cluster import check_cluster_gpus

    share = gpu_share(gpus, actors)
    assert 0 < share <= 1 and share * actors <= gpus and round(share * 1e4) == share * 1e4
    config = make_config(runtime="ray", device="auto", ray={"num_gpus_per_actor": share})
    check_cluster_gpus(config, actors, {"GPU": float(gpus), "CPU": 16.0})
