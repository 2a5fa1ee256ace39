"""Ray start-up never hangs: an address where nothing answers fails within seconds, naming the
address and the fix, and actors the local Ray could never schedule are refused when the config
loads, naming the fields. (Actors a joined cluster has no room for: tests/test_ray_trust.py.)"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from byzsgd.experiment import load_config
from byzsgd.registry import ConfigError
from byzsgd.runtime.cluster import UnreachableClusterError, probe_address

REPO = Path(__file__).resolve().parents[1]


def closed_port():
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_address_where_nothing_listens_is_refused_at_once(form):
    port = closed_port()
    with pytest.raises(UnreachableClusterError) as error:
        probe_address(form.format(port=port), timeout_s=5, source="ray.address")
    assert "nothing answers there (ray.address: connection refused)" in str(error.value)
    assert f"ray start --head --port={port}" in str(error.value)


def test_a_listening_address_passes_and_auto_is_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe_address(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5)
    probe_address("auto", timeout_s=5)  # no port: Ray resolves it from this machine's running cluster


@pytest.mark.parametrize("through", ["ray.address", "RAY_ADDRESS"])
def test_an_unreachable_cluster_fails_before_the_results_folder_exists(tmp_path, monkeypatch, through):
    from byzsgd.runner import run_experiment

    address = f"127.0.0.1:{closed_port()}"
    overrides = ["runtime=ray", "steps=1"] + ([f"ray.address={address}"] if through == "ray.address" else [])
    if through == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UnreachableClusterError, match=rf"\({through}: connection refused\)"):
        run_experiment(load_config(None, overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a retry with the address fixed may use the same folder


def run_cli(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "byzsgd.cli", "run", "--out", str(tmp_path / "run"), "--quiet", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,  # Ray's own retries took more than 500 s
    )


@pytest.mark.slow  # a subprocess each (seconds; the probe itself is tested above)
@pytest.mark.parametrize("through", ["--address", "RAY_ADDRESS"])
def test_byzsgd_run_against_an_address_where_nothing_listens_ends_in_one_line(tmp_path, through):
    address = f"127.0.0.1:{closed_port()}"
    args, env = (["--address", address], None) if through == "--address" else ([], {"RAY_ADDRESS": address})
    result = run_cli(tmp_path, "--set", "steps=1", "--set", "runtime=ray", *args, env=env)
    assert result.returncode == 2, result.stderr
    source = "ray.address" if through == "--address" else "RAY_ADDRESS"
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"byzsgd: cannot connect to Ray at '{address}': nothing answers there ({source}:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# 3 servers and 4 workers, one actor each by default
SEVEN_NODES_ON_RAY = [
    "runtime=ray",
    "nodes.n_ps=3",
    "nodes.f_ps=0",
    "server_attack={name: none}",
    "nodes.n_w=4",
    "nodes.f_w=1",
]


def test_actors_the_local_ray_cannot_host_are_refused_when_the_config_loads():
    overrides = [*SEVEN_NODES_ON_RAY, "attack.name=none"]
    with pytest.raises(ConfigError) as error:
        load_config(None, [*overrides, "ray.num_cpus=2", "ray.num_cpus_per_actor=0.5"])
    assert str(error.value) == (
        "ray.num_cpus_per_actor=0.5 x 7 actors needs 3.5 CPUs, but the local Ray gets ray.num_cpus=2: "
        "lower ray.num_cpus_per_actor, host the nodes in fewer actors (ray.actors), or raise ray.num_cpus"
    )
    load_config(None, [*overrides, "ray.num_cpus=2", "ray.num_cpus_per_actor=0.5", "ray.actors=4"])  # 4 x 0.5 fit
    load_config(None, [*overrides, "ray.num_cpus=4", "ray.num_cpus_per_actor=0.5"])  # exactly 4 CPUs: fits
    # a cluster joined by address may grow: checked when its actors start, with ray.start_timeout_s
    load_config(None, [*overrides, "ray.num_cpus=2", "ray.num_cpus_per_actor=0.5", "ray.address=auto"])
    load_config(None, [*overrides, "ray.num_cpus=2", "ray.num_cpus_per_actor=0.5", "runtime=local"])


def test_the_fault_injectors_actor_counts_too():
    overrides = [*SEVEN_NODES_ON_RAY, "ray.num_cpus=1"]
    load_config(None, [*overrides, "attack={name: signflip}", "ray.num_cpus_per_actor=0.14"])  # 7 x 0.14 = 0.98
    with pytest.raises(ConfigError, match=r"0.14 x 8 actors needs 1.12 CPUs"):
        load_config(None, [*overrides, "attack={name: alie}", "ray.num_cpus_per_actor=0.14"])  # + the adversary


@pytest.mark.slow  # a subprocess each (seconds; the probe itself is tested above)
def test_a_ray_sweep_against_an_address_where_nothing_listens_ends_in_one_line(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("runtime: ray\nsteps: 1\nsweep:\n  grid:\n    seed: [0, 1]\n")
    address = f"127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "byzsgd.cli", "sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet"],
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"byzsgd: cannot connect to Ray at '{address}': nothing answers there (RAY_ADDRESS:")
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess each (seconds; the probe itself is tested above)
def test_an_address_that_answers_but_is_no_ray_head_ends_within_the_start_timeout(tmp_path):
    with socket.socket() as server:  # listens (the kernel accepts connections) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        result = run_cli(
            tmp_path, "--set", "steps=1", "--set", "runtime=ray", "--set", "ray.start_timeout_s=3", "--address", address
        )
    assert result.returncode == 2, result.stderr
    # (Ray's own retry warnings, from the thread left behind, may follow it)
    ours = [line for line in result.stderr.splitlines() if line.startswith("byzsgd:")]
    assert len(ours) == 1
    last = ours[0]
    assert last.startswith(f"byzsgd: cannot connect to Ray at '{address}': something answers there but ray.init")
    assert "within ray.start_timeout_s=3 s" in last and "8265 is the dashboard" in last
