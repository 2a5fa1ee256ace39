"""How the Ray runtime moves payloads and places actors: bytes copied and crossing machines,
zero-copy reads, GPU requests and each actor's device. Pure functions, except one Ray task."""

import numpy as np
import pytest

from byzsgd.experiment import assemble
from byzsgd.registry import ConfigError
from byzsgd.runtime.actors import INLINE_PAYLOAD_BYTES, Traffic, shipped
from byzsgd.runtime.cluster import Placement, check_cluster_gpus, gpu_groups
from byzsgd.training import actor_device
from tests.conftest import make_config

BIG = INLINE_PAYLOAD_BYTES // 4 + 1  # float32 entries of a payload that goes through the object store


def vector(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.float32)


def test_a_broadcast_object_is_copied_once_and_crosses_once_per_receiving_machine():
    # Actors 0 and 1 on machine A (the sender is actor 0), 2 and 3 on B, 4 on C.
    traffic = Traffic("A", ["A", "A", "B", "B", "C"])
    model = vector(BIG)
    traffic.flush([(host, [model]) for host in (1, 2, 3, 4)])
    assert traffic.counts["put_bytes"] == model.nbytes  # one ray.put for four receivers
    assert traffic.counts["cross_node_bytes"] == 2 * model.nbytes  # pulled once to B, once to C
    assert traffic.counts["inline_bytes"] == 0


def test_inline_payloads_are_serialized_into_every_call_that_carries_them():
    traffic = Traffic("A", ["A", "A", "B", "B"])
    small, other = vector(10), vector(20)
    traffic.flush([(1, [small]), (2, [small, other]), (3, [small])])
    assert traffic.counts["inline_bytes"] == 3 * small.nbytes + other.nbytes
    assert traffic.counts["cross_node_bytes"] == 2 * small.nbytes + other.nbytes  # the calls to B
    assert traffic.counts["put_bytes"] == 0


def test_a_byzantine_payload_that_is_no_array_counts_nothing():
    traffic = Traffic("A", ["A", "B"])
    traffic.flush([(1, ["not an array", None])])
    assert sum(traffic.counts.values()) == 0


def test_the_adversary_tap_is_one_copy_of_what_it_carries():
    traffic = Traffic("A", ["A"])
    traffic.call([vector(10), vector(10)])
    traffic.call([vector(BIG)])
    assert traffic.counts["inline_bytes"] == 80 and traffic.counts["put_bytes"] == 4 * BIG


def test_received_objects_are_read_in_place_from_the_object_store(ray_cluster):
    payload = np.arange(BIG, dtype=np.float32)
    reference = shipped(payload)
    assert reference is not payload  # large: one object, shared by every call that carries it

    @ray_cluster.remote(num_cpus=0.05)
    def receive(received: np.ndarray) -> tuple[bool, bool, float]:
        # A zero-copy view into shared memory: read-only, owning no data of its own.
        return received.flags.writeable, received.flags.owndata, float(received[-1])

    assert ray_cluster.get(receive.remote(reference)) == (False, False, BIG - 1)
    small = vector(10)
    assert shipped(small) is small  # inline in the call


@pytest.mark.parametrize(
    ("requested", "gpu_ids", "device"),
    [
        ("auto", [3], "cuda:0"),  # Ray sets CUDA_VISIBLE_DEVICES=3: the actor's only GPU is cuda:0
        ("cuda", ["0"], "cuda:0"),
        ("auto", [], "cpu"),  # no GPU from Ray: never CUDA, even where the machine has GPUs
        ("cpu", [0], "cpu"),
    ],
)
def test_an_actor_computes_on_the_gpu_ray_assigned_it_or_on_the_cpu(requested, gpu_ids, device):
    assert actor_device(requested, gpu_ids) == device


def test_workers_get_gpus_and_servers_stay_on_the_cpu_unless_listed():
    config = make_config(runtime="ray", device="auto", ray={"num_gpus_per_actor": 0.25})
    experiment = assemble(config)  # 5 servers then 7 workers, one actor each
    assert gpu_groups(experiment) == [False] * 5 + [True] * 7
    both_roles = {"num_gpus_per_actor": 0.25, "gpu_roles": ["workers", "servers"]}
    both = assemble(make_config(runtime="ray", device="auto", ray=both_roles))
    assert gpu_groups(both) == [True] * 12
    assert gpu_groups(assemble(make_config(runtime="ray"))) == [False] * 12
    # Three actors: the servers' one stays on the CPU; the two workers' ones get a GPU share each.
    grouped = assemble(make_config(runtime="ray", device="auto", ray={"num_gpus_per_actor": 0.5, "actors": 3}))
    assert gpu_groups(grouped) == [False, True, True]
    options = Placement(grouped.config, gpu_groups(grouped)).options
    assert options(True)["num_gpus"] == 0.5 and options(False)["num_gpus"] == 0
    assert options(False)["scheduling_strategy"] == "SPREAD"


def test_a_cluster_without_enough_gpus_is_refused_at_start_up():
    config = make_config(runtime="ray", device="auto", ray={"num_gpus_per_actor": 0.25})
    with pytest.raises(ConfigError, match=r"ray.num_gpus_per_actor=0.25: the Ray cluster has no GPU \(CPU: 2\)"):
        check_cluster_gpus(config, 7, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"7 actors .* the cluster's 1 GPU hold 4 of them"):
        check_cluster_gpus(config, 7, {"CPU": 2.0, "GPU": 1.0})
    check_cluster_gpus(config, 8, {"GPU": 2.0})  # four quarters on each GPU
    check_cluster_gpus(config, 0, {"CPU": 2.0})  # no actor asks for one
    whole = make_config(runtime="ray", device="cuda", ray={"num_gpus_per_actor": 2})
    check_cluster_gpus(whole, 2, {"GPU": 4.0})
    with pytest.raises(ConfigError, match=r"3 actors .* hold 2 of them"):
        check_cluster_gpus(whole, 3, {"GPU": 4.0})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"ray": {"num_gpus_per_actor": -1}}, r"ray.num_gpus_per_actor=-1.0: must be >= 0"),
        ({"ray": {"num_gpus_per_actor": 1.5}}, r"ray.num_gpus_per_actor=1.5: .* a whole number above 1"),
        ({"ray": {"gpu_roles": ["workers", "workers"]}}, r"ray.gpu_roles=\['workers', 'workers'\]: .* distinct"),
        ({"ray": {"gpu_roles": ["drivers"]}}, r"ray.gpu_roles\[0\]: 'drivers' is not one of workers, servers"),
        ({"ray": {"num_gpus_per_actor": 1, "gpu_roles": []}}, r"ray.gpu_roles=\[\]: name the roles"),
        ({"ray": {"num_gpus_per_actor": 1}, "device": "cpu"}, r"device: cpu: the actors would hold GPUs"),
        ({"device": "cuda"}, r"device: cuda on Ray needs ray.num_gpus_per_actor > 0"),
    ],
)
def test_gpu_fields_are_checked(sections, message):
    with pytest.raises(ConfigError, match=message):
        make_config(runtime="ray", **sections)


def test_the_in_process_runtime_ignores_the_ray_gpu_fields():
    make_config(runtime="local", device="cuda", ray={"num_gpus_per_actor": 0})  # checked only when it runs
