"""End to end on a real local Ray: nodes hosted by actors, Byzantine nodes through the injector actor."""

import json

import pytest

from byzsgd.experiment import host_groups
from byzsgd.metrics import read_jsonl
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.runtime.actors import INLINE_PAYLOAD_BYTES
from tests.conftest import make_config


@pytest.mark.slow
def test_ray_run_trains_past_chance_with_active_byzantine_nodes(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray",
        steps=30,
        eval_every=10,
        nodes={"n_ps": 5, "f_ps": 1, "n_w": 4, "f_w": 1},
        attack={"name": "nan"},
        server_attack={"name": "signflip", "params": {"scale": 10.0}},
    )
    result = run_experiment(config, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert len(result.summary["byzantine"]) == 2
    assert result.summary["actors"] == 9  # one per node
    assert rows[-1]["byzantine_messages"] > 0
    assert rows[-1]["rejected_non_finite"] > 0  # the NaN worker's gradients reached and were refused
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"]["step"] == 30


@pytest.mark.slow
def test_nodes_sharing_two_actors_batch_their_messages_and_still_resist_attacks(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray",
        steps=30,
        eval_every=10,
        nodes={"n_ps": 5, "f_ps": 1, "n_w": 4, "f_w": 1},
        attack={"name": "ipm", "params": {"eps": 2.0}},  # omniscient: corrupted by the adversary actor
        server_attack={"name": "signflip", "params": {"scale": 10.0}},  # corrupted in its own host
        network={"reorder": 0.2, "reorder_delay": 2.0},  # held-back messages travel on their own
        model={"name": "mlp", "hidden": 512},  # 154 KB vectors: through the object store, not inline
        ray={"actors": 2},
    )
    result = run_experiment(config, tmp_path / "run")
    rows = result.rows
    assert result.summary["actors"] == 3  # two hosts and the adversary
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[-1]["test_acc"] > 0.5
    assert rows[-1]["byzantine_messages"] > 0
    assert rows[-1]["bytes"] / rows[-1]["messages"] > INLINE_PAYLOAD_BYTES
    # Messages between co-hosted nodes take no call, the rest share calls: far fewer calls than messages.
    assert 0 < rows[-1]["ray_calls"] < rows[-1]["messages"] / 3


def test_host_groups_keep_roles_apart_in_proportion_to_their_counts():
    servers, workers = ["ps0", "ps1", "ps2", "ps3", "ps4"], [f"w{i}" for i in range(7)]
    assert host_groups(servers, workers, None) == [[n] for n in servers + workers]
    assert host_groups(servers, workers, 12) == host_groups(servers, workers, 50) == [[n] for n in servers + workers]
    assert host_groups(servers, workers, 1) == [servers + workers]
    assert host_groups(servers, workers, 2) == [servers, workers]
    assert host_groups(servers, workers, 3) == [servers, ["w0", "w2", "w4", "w6"], ["w1", "w3", "w5"]]
    assert host_groups(["ps0"], workers, 4) == [["ps0"], ["w0", "w3", "w6"], ["w1", "w4"], ["w2", "w5"]]
    for actors in range(1, 13):
        groups = host_groups(servers, workers, actors)
        assert len(groups) == actors and sorted(sum(groups, [])) == sorted(servers + workers)
        assert all(len({n[0] for n in group}) == 1 for group in groups) or actors == 1  # one role per actor


def test_ray_actors_must_be_positive():
    with pytest.raises(ConfigError, match=r"ray.actors=0: must be at least 1"):
        make_config(ray={"actors": 0})
