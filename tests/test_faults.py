"""The fault injector inside the in-process runtime: the omniscient adversary's bounded wait,
crashes, slow nodes, drops, reordering and rotating Byzantine sets."""

import numpy as np
import pytest

from byzsgd import faults
from byzsgd.attacks import FlippedLabels
from byzsgd.experiment import assemble
from byzsgd.faults import FaultInjector
from byzsgd.messages import broadcast
from byzsgd.metrics import Monitor
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.runtime import local
from byzsgd.training import Workload
from tests.conftest import make_config


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


class RecordingInjector(FaultInjector):
    """Notes how many correct vectors the adversary had seen at each attacked message."""

    instances: list["RecordingInjector"] = []

    def __init__(self, config):
        super().__init__(config)
        self.seen: list[int] = []
        self.workloads: dict[str, object] = {}
        RecordingInjector.instances.append(self)

    def corrupt(self, messages):
        for m in messages:
            if self.is_byzantine(m.sender, m.round):
                self.seen.append(len(self.observed.get((m.kind, m.round), {})))
        return super().corrupt(messages)

    def workload_for(self, node_id, workload):
        self.workloads[node_id] = super().workload_for(node_id, workload)
        return self.workloads[node_id]


@pytest.fixture
def recording(monkeypatch):
    RecordingInjector.instances = []
    monkeypatch.setattr(local, "FaultInjector", RecordingInjector)
    return RecordingInjector.instances


def run(**sections):
    return run_experiment(make_config(**{"steps": 30, "eval_every": 10, **sections})).rows


def test_omniscient_adversary_waits_for_the_correct_gradients_of_the_round(recording):
    rows = run(steps=20, attack={"name": "alie"})
    assert rows[-1]["step"] == 20
    waited = np.array(recording[-1].seen)
    assert len(waited) > 0 and np.mean(waited == 5) > 0.9  # n_w - f_w = 5 correct workers
    run(steps=20, attack={"name": "alie"}, network={"observe_timeout": 0.0})
    assert np.mean(recording[-1].seen) < waited.mean()


def test_the_adversary_never_stalls_the_run_when_correct_vectors_never_all_come(monkeypatch, recording):
    attack = {"name": "ipm", "params": {"eps": 0.5}}
    complete = run(steps=20, attack=attack)[-1]["byzantine_messages"]  # the adversary sees all 5 every round
    monkeypatch.setattr(faults.Role, "correct_count", property(lambda self: 10**6))
    rows = run(steps=20, attack=attack)
    assert rows[-1]["step"] == 20
    # Released by the timeout: every round's attack went out, built from what had arrived, except
    # the last round's (2 Byzantine workers x 5 servers), which may still wait when the run ends.
    assert complete - 2 * 5 <= rows[-1]["byzantine_messages"] <= complete
    assert len(recording[-1].seen) > 0 and min(recording[-1].seen) >= 1


def test_crashed_worker_and_server_do_not_stop_the_async_run():
    rows = run(attack={"name": "crash", "params": {"step": 10}}, server_attack={"name": "crash", "params": {"step": 5}})
    assert rows[-1]["step"] == 30 and rows[-1]["test_acc"] > 0.8


def test_drop_loses_about_p_of_the_faulty_nodes_messages():
    kept = run(attack={"name": "drop", "params": {"p": 0.0}})[-1]["byzantine_messages"]
    dropped = run(attack={"name": "drop", "params": {"p": 0.5}})
    assert dropped[-1]["test_acc"] > 0.8
    assert 0.35 < dropped[-1]["byzantine_messages"] / kept < 0.65


def network(**net):
    config = make_config(network=net, attack={"name": "slow", "params": {"delay": 10.0}, "ids": [0]})
    injector = FaultInjector(config)
    return local.Network({}, injector, assemble(config), Monitor(Workload(config), [], 1))


def delivery(net):
    return [(time, m.sender, m.round) for time, _, m in sorted(net.queue)]


def test_reorder_holds_messages_back_so_later_ones_overtake_them():
    payload = np.zeros(3, np.float32)
    for reorder, expect_sorted in [(0.0, True), (0.3, False)]:
        net = network(delay=1.0, jitter=0.0, reorder=reorder, reorder_delay=5.0)
        for round_ in range(50):
            net.now = float(round_)
            net.send("w1", broadcast("w1", ["ps0"], "gradient", round_, payload))
        rounds = [r for _, _, r in delivery(net)]
        assert (rounds == sorted(rounds)) == expect_sorted


def test_a_slow_node_delivers_late():
    net = network(delay=1.0, jitter=0.0)
    payload = np.zeros(3, np.float32)
    net.send("w0", broadcast("w0", ["ps0"], "gradient", 0, payload))  # w0 is the slow one
    net.send("w1", broadcast("w1", ["ps0"], "gradient", 0, payload))
    assert [(t, s) for t, s, _ in delivery(net)] == [(1.0, "w1"), (11.0, "w0")]


def test_label_flipping_workers_compute_on_flipped_labels_and_training_survives(recording):
    rows = run(attack={"name": "labelflip"})
    workloads = recording[-1].workloads
    flipped = sorted(n for n, w in workloads.items() if isinstance(w, FlippedLabels))
    assert flipped == recording[-1].byzantine and len(flipped) == 2
    assert rows[-1]["test_acc"] > 0.8


def test_rotating_byzantine_workers_are_tolerated():
    rows = run(attack={"name": "signflip", "params": {"scale": 4.0}, "rotate_every": 5})
    assert rows[-1]["step"] == 30 and rows[-1]["test_acc"] > 0.8


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"network": {"reorder": 2}}, r"network.reorder=2.0: must be a probability"),
        ({"network": {"observe_timeout": -1}}, r"network.observe_timeout=-1.0: must be >= 0"),
        ({"attack": {"name": "crash", "params": {"step": -1}}}, r"attack.params: attack 'crash': step=-1"),
        ({"attack": {"name": "signflip", "count": 3}}, r"attack.count=3: at most f=2 workers"),
        ({"attack": {"name": "labelflip", "rotate_every": 3}}, r"labelflip fixes its workers"),
    ],
)
def test_bad_fault_settings_are_clear_errors(sections, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**sections)


@pytest.mark.parametrize(
    "sections, quorum",
    [
        ({"attack": {"name": "optimal-ipm", "count": 1}}, 5),  # n_w - declared f_w, not n_w - attackers
        (
            {
                "protocol": "ps",
                "nodes": {"n_ps": 1, "f_ps": 0, "n_w": 17, "f_w": 8},
                "aggregator": {"name": "ctma", "params": {"base": "median"}},
                "attack": {"name": "optimal-ipm"},
                "server_attack": {"name": "none"},
                "ps": {"wait": "all"},
            },
            17,
        ),
    ],
)
def test_an_optimal_attack_searches_against_the_quorum_a_correct_server_aggregates(sections, quorum):
    injector = FaultInjector(make_config(**sections))
    attacker = injector.workers.roster.fixed[0]
    message = broadcast(attacker, ["ps0"], "gradient", 0, np.zeros(3, np.float32))[0]
    assert injector._context(message, injector.workers).quorum == quorum
