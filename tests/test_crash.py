"""Crashes on a real local Ray: actors killed mid-run with ``ray.kill`` must not stop the
asynchronous run; and the omniscient adversary's actor, tapped by correct nodes, never stalls it."""

import pytest

from byzsgd.runner import run_experiment
from byzsgd.runtime import ray as ray_runtime
from tests.conftest import make_config

pytestmark = pytest.mark.slow


class RecordedActors:
    """Wraps the runtime's NodeActor class to keep each node's host actor, so a test can kill it."""

    def __init__(self, actor_class):
        self.actor_class = actor_class
        self.handles = {}

    def options(self, **options):
        shell = self.actor_class.options(**options)
        recorder = self

        class Remote:
            def remote(self, plan, node_ids, *args, **kwargs):
                handle = shell.remote(plan, node_ids, *args, **kwargs)
                recorder.handles.update(dict.fromkeys(node_ids, handle))
                return handle

        return Remote()


def test_a_worker_and_a_server_killed_mid_run_do_not_stop_the_async_run(ray_cluster, tmp_path, monkeypatch):
    actors = RecordedActors(ray_runtime.NodeActor)
    monkeypatch.setattr(ray_runtime, "NodeActor", actors)
    killed = []

    def kill_at_step_10(row):
        if row["step"] == 10:
            for node in ("w3", "ps4"):  # one correct worker and one correct server: f_w = f_ps = 1
                ray_cluster.kill(actors.handles[node])
                killed.append(node)

    config = make_config(runtime="ray", steps=40, eval_every=10, nodes={"n_ps": 5, "f_ps": 1, "n_w": 4, "f_w": 1})
    result = run_experiment(config, tmp_path / "run", on_row=kill_at_step_10)
    rows = result.rows
    assert killed == ["w3", "ps4"]
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]
    assert "ps4" in rows[1]["test_acc_per_server"] and "ps4" not in rows[-1]["test_acc_per_server"]
    assert len(rows[-1]["test_acc_per_server"]) == 4
    assert rows[-1]["train_loss"] < 0.6 * rows[1]["train_loss"]  # the survivors kept training after the kills
    assert rows[-1]["test_acc"] > 0.5
    assert result.summary["status"] == "finished"


def test_omniscient_attack_on_ray_with_reordering_finishes(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray",
        steps=30,
        eval_every=10,
        nodes={"n_ps": 5, "f_ps": 1, "n_w": 4, "f_w": 1},
        attack={"name": "ipm", "params": {"eps": 2.0}},
        server_attack={"name": "equivocation", "params": {"poison_params": {"scale": 4.0}}},
        network={"reorder": 0.2, "reorder_delay": 2.0},
    )
    rows = run_experiment(config, tmp_path / "run").rows
    assert rows[-1]["step"] == 30 and rows[-1]["test_acc"] > 0.5
    assert rows[-1]["byzantine_messages"] > 0
