"""A real multi-node Ray cluster on this machine: three raylets, each with its own object store.
Checks that ``ray.placement: spread`` puts actors on every node, that the bytes counted as
crossing between nodes are exactly what the protocol sends there, and that GPUs asked of a
cluster without any are refused at start-up."""

import pytest

from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from tests.conftest import make_config

pytestmark = pytest.mark.slow

RAYLETS = 3


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    was_running = ray.is_initialized()  # the session's single-node Ray (conftest's ray_cluster)
    if was_running:
        ray.shutdown()
    small = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    for _ in range(RAYLETS - 1):
        cluster.add_node(**small)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:  # give the tests after this module the Ray they started with
            ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False)


def vanilla(placement: str, steps: int):
    """One server, three workers, digits with a 153 KB model (through the object store)."""
    return make_config(
        runtime="ray",
        protocol="ps",
        steps=steps,
        eval_every=steps,
        nodes={"n_ps": 1, "f_ps": 0, "n_w": 3, "f_w": 0},
        data={"dataset": "digits", "batch_size": 16},
        model={"name": "mlp", "hidden": 512},
        aggregator={"name": "mean"},
        ray={"placement": placement, "num_cpus_per_actor": 0.05},
    )


def test_spread_puts_actors_on_every_node_and_counts_what_crosses_between_them(cluster, tmp_path):
    steps = 4
    summary = run_experiment(vanilla("spread", steps), tmp_path / "spread").summary
    machine = summary["ray_nodes"]
    assert len(set(machine.values())) == RAYLETS  # 4 actors over 3 nodes: every node hosts one
    assert set(summary["devices"].values()) == {"cpu"}  # no actor asked for a GPU
    size = 4 * summary["parameters"]
    workers = ["w0", "w1", "w2"]
    # Every step: the server's model is one object, pulled once to each other machine with workers;
    # each worker's gradient is pulled to the server's machine unless it is there already.
    remote_workers = [w for w in workers if machine[w] != machine["ps0"]]
    worker_machines = {machine[w] for w in remote_workers}
    per_step = size * (len(worker_machines) + len(remote_workers))
    assert summary["cross_node_bytes_per_step"] == per_step > 0
    assert summary["put_bytes_per_step"] == size * (1 + len(workers))  # one put per broadcast and per gradient
    assert summary["inline_bytes_per_step"] == 0


def test_pack_keeps_every_actor_on_one_node(cluster, tmp_path):
    summary = run_experiment(vanilla("pack", 2), tmp_path / "pack").summary
    assert len(set(summary["ray_nodes"].values())) == 1
    assert summary["cross_node_bytes_per_step"] == 0 < summary["put_bytes_per_step"]


def test_gpus_asked_of_a_cluster_without_any_are_refused_before_any_actor_starts(cluster, tmp_path):
    config = make_config(runtime="ray", device="auto", ray={"num_gpus_per_actor": 0.25})
    with pytest.raises(ConfigError, match=r"ray.num_gpus_per_actor=0.25: the Ray cluster has no GPU \(CPU: 3\)"):
        run_experiment(config, tmp_path / "gpu")
