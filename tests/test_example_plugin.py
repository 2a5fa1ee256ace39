"""The worked example (experiments/custom): its own model, attack and rule, on both runtimes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import byzsgd
from tests.test_plugins import isolated_registries  # noqa: F401  (autouse fixture)

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "custom"
CONFIG = EXAMPLE / "custom.yaml"


def test_the_worked_example_resists_its_attack_where_the_mean_does_not(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # what PYTHONPATH=experiments/custom does
    robust = byzsgd.run(CONFIG, {"steps": 40}, run_dir=tmp_path / "robust")
    assert robust.config.model.name == "my_plugin:make_net" and robust.summary["parameters"] == 160 + 16 * 64 * 10 + 10
    assert robust.rows[-1]["byzantine_messages"] > 0
    assert robust.rows[-1]["test_acc"] > 0.7
    averaged = byzsgd.run(CONFIG, {"steps": 40, "aggregator.name": "mean"}, run_dir=tmp_path / "mean")
    assert averaged.rows[-1]["test_acc"] < 0.3  # the noisy-flip workers win against plain averaging


@pytest.mark.slow
def test_the_worked_example_runs_on_ray_from_the_command_line(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), str(EXAMPLE.parents[1])])
    command = [
        sys.executable,
        "-m",
        "byzsgd.cli",
        "run",
        str(CONFIG),
        "--runtime",
        "ray",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "steps=20",
        "--set",
        "ray.num_cpus=2",
        "--set",
        "ray.actors=2",
        "--set",
        "ray.object_store_memory=100000000",
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["runtime"] == "ray" and summary["final"]["step"] == 20
    assert summary["final"]["byzantine_messages"] > 0 and summary["final"]["test_acc"] > 0.3  # chance: 0.1
