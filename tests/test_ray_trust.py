"""On a real local Ray: a hostile process holding actor handles cannot speak as another actor's
node, deliver without its pair's secret, or control an actor; each refusal is counted and the run
is not disturbed. And every start-up wait is bounded: actors the cluster has no room for end
the run with a message saying what was requested and what the cluster has."""

import time

import numpy as np
import pytest
import ray as ray_module
from ray.exceptions import RayTaskError

from byzsgd.bus import StalledError
from byzsgd.runner import run_experiment
from byzsgd.runtime import ray as ray_runtime
from tests.conftest import make_config

pytestmark = pytest.mark.slow


def test_forged_senders_wrong_secrets_and_foreign_control_calls_are_refused_and_counted(
    ray_cluster, tmp_path, monkeypatch
):
    collect_reports = ray_runtime.collect_reports
    refused = {}

    def attack_then_collect(experiment, monitor, hosts, home, keys):
        # This test's driver plays a compromised actor 1 (hosting workers): it holds every handle
        # and its own secrets, as a hostile node's shell would.
        assert experiment.groups[0] == ["ps0", "ps1", "ps2"] and home["w0"] == 1 and home["w1"] == 2
        servers, mine = hosts[0], keys[1]
        payload = np.zeros(3, dtype=np.float32)
        ray_module.get(
            [
                # w1 is hosted by actor 2: a forged identity; ps1 -> ps0 would forge a server's message.
                servers.deliver.remote(1, mine.pairs[0], [("w1", "ps0", "gradient", 1, 0, 0.0)], payload),
                servers.deliver.remote(1, mine.pairs[0], [("ps1", "ps0", "model", 1, 0, 0.0)], payload),
                # actor 2's pair secret is not actor 1's to use; a made-up one neither.
                servers.deliver.remote(2, mine.pairs[0], [("w1", "ps0", "gradient", 1, 0, 0.0)], payload),
                servers.deliver.remote(1, b"0" * 16, [("w0", "ps0", "gradient", 1, 0, 0.0)], payload),
                # a header pointing at a payload the call does not carry
                servers.deliver.remote(1, mine.pairs[0], [("w0", "ps0", "gradient", 1, 5, 0.0)], payload),
                # a lead that would throw the receiver's simulated clock
                servers.deliver.remote(1, mine.pairs[0], [("w0", "ps0", "gradient", 1, 0, float("nan"))], payload),
            ]
        )
        for call in (
            lambda: servers.start.remote(mine.driver),
            lambda: servers.report.remote(mine.driver, "ps0", 0),
            lambda: servers.stats.remote(None),
            lambda: servers.connect.remote(mine.driver, hosts, home, mine),
        ):
            with pytest.raises(RayTaskError, match="not the driver"):
                ray_module.get(call(), timeout=60)
        refused["done"] = True
        return collect_reports(experiment, monitor, hosts, home, keys)

    monkeypatch.setattr(ray_runtime, "collect_reports", attack_then_collect)
    config = make_config(
        runtime="ray", steps=30, eval_every=10, nodes={"n_ps": 3, "f_ps": 0, "n_w": 4, "f_w": 1}, ray={"actors": 3}
    )
    result = run_experiment(config, tmp_path / "run")
    final = result.rows[-1]
    assert refused == {"done": True}
    assert result.summary["status"] == "finished"
    assert final["rejected_forged"] == 2
    assert final["rejected_unauthenticated"] == 2
    assert final["rejected_malformed"] == 2
    assert final["rejected_control"] == 4
    # (the asynchronous protocol's own stale messages are counted apart: rejected_stale etc.)
    assert final["test_acc"] > 0.6


def test_actors_the_cluster_has_no_room_for_end_the_run_with_what_was_asked(ray_cluster, tmp_path):
    # The session's Ray has 2 CPUs; ray.num_cpus=64 only passes the load-time check, which
    # assumes the local Ray this config would start.
    config = make_config(
        runtime="ray",
        steps=10,
        eval_every=10,
        nodes={"n_ps": 3, "f_ps": 0, "n_w": 4, "f_w": 1},
        ray={"num_cpus": 64, "num_cpus_per_actor": 1.0, "start_timeout_s": 3},
    )
    with pytest.raises(StalledError) as error:
        run_experiment(config, tmp_path / "run")
    message = str(error.value)
    assert "not all up within ray.start_timeout_s=3 s" in message
    assert "ray.num_cpus_per_actor=1.0 CPU each (7 in all)" in message
    assert "the cluster has 2 CPUs" in message
    # The actors were killed: the cluster gets its CPUs back for the next run.
    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU") == 2
