"""The single parameter server baseline: its server step, its config rules, both runtimes."""

import numpy as np
import pytest
import torch

from byzsgd.messages import Message, timer_delay
from byzsgd.protocols import PROTOCOLS
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.training import Workload
from tests.conftest import make_config

ONE_SERVER = {"n_ps": 1, "f_ps": 0, "n_w": 7, "f_w": 2}


def ps_config(**sections):
    sections.setdefault("nodes", ONE_SERVER)
    return make_config(protocol="ps", **sections)


def build(config, node_id):
    return PROTOCOLS["ps"].make_node(config, node_id, Workload(config))


def test_server_steps_with_the_rule_over_the_first_n_w_minus_f_w_gradients():
    config = ps_config(aggregator={"name": "median"}, optimizer={"lr": 0.5})
    server = build(config, "ps0")
    start = server.vector.numpy().copy()
    gradients = np.random.default_rng(0).normal(size=(7, start.size)).astype(np.float32)
    out = []
    for i in range(5):
        assert server.step == 0
        out = server.on_message(Message(f"w{i}", "ps0", "gradient", 0, gradients[i]))
    assert server.step == 1
    assert sorted(m.receiver for m in out) == [f"w{i}" for i in range(7)] and {m.kind for m in out} == {"model"}
    expected = start - 0.5 * np.median(gradients[:5], axis=0)
    np.testing.assert_allclose(server.vector.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert server.on_message(Message("w5", "ps0", "gradient", 0, gradients[5])) == []  # late: round closed


def test_worker_returns_the_gradient_at_the_servers_model():
    config = ps_config()
    worker = build(config, "w3")
    reference = Workload(config)
    model = np.random.default_rng(1).normal(size=reference.dimension).astype(np.float32)
    (message,) = worker.on_message(Message("ps0", "w3", "model", 0, model))
    expected, _ = reference.gradient(torch.from_numpy(model), reference.sampler(3).next())
    assert message.receiver == "ps0" and message.kind == "gradient"
    np.testing.assert_allclose(message.payload, expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        ({"n_ps": 5, "f_ps": 1}, "single correct parameter server: set nodes.n_ps=1 and nodes.f_ps=0"),
        ({"n_ps": 1, "f_ps": 1}, "nodes.f_ps"),
    ],
)
def test_more_than_one_server_is_a_clear_config_error(nodes, match):
    with pytest.raises(ConfigError, match=match):
        make_config(protocol="ps", nodes=nodes)


def test_a_rule_that_cannot_absorb_f_w_on_the_quorum_is_a_config_error():
    with pytest.raises(ConfigError, match="aggregator.name='mda' with f=3 needs 7 inputs, but a quorum has 4"):
        ps_config(nodes={"n_ps": 1, "f_ps": 0, "n_w": 7, "f_w": 3})


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_mean_fails_under_a_gaussian_attack_and_mda_does_not(in_tmp):
    attack = {"name": "gaussian", "params": {"std": 100.0}}
    robust = run_experiment(ps_config(attack=attack)).rows
    naive = run_experiment(ps_config(attack=attack, aggregator={"name": "mean"})).rows
    assert robust[-1]["step"] == 60 and robust[-1]["test_acc"] > 0.8
    assert naive[-1]["test_acc"] < 0.5


def test_ctma_fills_the_robust_rule_slot(in_tmp):
    rule = {"name": "ctma", "params": {"base": {"name": "median"}}}
    rows = run_experiment(ps_config(aggregator=rule, attack={"name": "signflip", "params": {"scale": 4.0}})).rows
    assert rows[-1]["test_acc"] > 0.8


@pytest.mark.slow
def test_ps_trains_on_ray_with_byzantine_workers(ray_cluster, tmp_path):
    config = ps_config(runtime="ray", steps=30, eval_every=10, attack={"name": "signflip", "params": {"scale": 4.0}})
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["status"] == "finished" and result.summary["byzantine"] == ["w2", "w3"]
    assert result.rows[-1]["step"] == 30 and result.rows[-1]["test_acc"] > 0.5


SYNC_17 = {"n_ps": 1, "f_ps": 0, "n_w": 17, "f_w": 8}


def test_waiting_for_all_gradients_steps_on_all_or_on_a_quorum_once_the_timeout_passed():
    config = ps_config(nodes=SYNC_17, aggregator={"name": "median"}, optimizer={"lr": 0.5}, ps={"wait": "all"})
    server = build(config, "ps0")
    start = server.vector.numpy().copy()
    assert [m.kind for m in server.start()][-1] == "timeout"
    gradients = np.random.default_rng(0).normal(size=(17, start.size)).astype(np.float32)
    for i in range(16):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, gradients[i]))
    assert server.step == 0  # 16 of 17: a quorum would have stepped long ago
    out = server.on_message(Message("w16", "ps0", "gradient", 0, gradients[16]))
    assert server.step == 1 and out[-1].kind == "timeout" and out[-1].round == 1
    expected = start - 0.5 * np.median(gradients, axis=0)
    np.testing.assert_allclose(server.vector.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Step 1: 9 = n_w - f_w gradients, then the timeout: the 8 silent workers are missing inputs.
    for i in range(9):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 1, gradients[i]))
    assert server.step == 1
    assert server.on_message(Message("w3", "ps0", "timeout", 1, out[-1].payload)) == []  # only its own timer
    server.on_message(out[-1])
    assert server.step == 2
    np.testing.assert_allclose(server.vector.numpy(), expected - 0.5 * np.median(gradients[:9], axis=0), rtol=1e-5)


def test_a_timeout_before_a_quorum_waits_for_the_quorum():
    config = ps_config(nodes=SYNC_17, aggregator={"name": "median"}, ps={"wait": "all"})
    server = build(config, "ps0")
    timeout = server.start()[-1]
    for i in range(8):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, np.ones(server.vector.numel(), np.float32)))
    server.on_message(timeout)
    assert server.step == 0  # 8 < n_w - f_w = 9: more than f_w would be missing
    server.on_message(Message("w8", "ps0", "gradient", 0, np.ones(server.vector.numel(), np.float32)))
    assert server.step == 1


def test_ps_with_ctma_trains_with_8_of_17_byzantine_when_waiting_for_all(in_tmp):
    with pytest.raises(ConfigError, match="needs 17 inputs, but a quorum has 9"):
        ps_config(nodes=SYNC_17, aggregator={"name": "ctma", "params": {"base": "median"}})
    attack = {"name": "signflip", "params": {"scale": 4.0}}
    sync = {"nodes": SYNC_17, "attack": attack, "ps": {"wait": "all"}, "steps": 40, "eval_every": 20}
    rows = run_experiment(ps_config(aggregator={"name": "ctma", "params": {"base": "median"}}, **sync)).rows
    assert rows[-1]["step"] == 40 and rows[-1]["test_acc"] > 0.8
    naive = run_experiment(ps_config(aggregator={"name": "mean"}, **sync)).rows
    assert naive[-1]["test_acc"] < 0.5
    silent = run_experiment(ps_config(**{**sync, "attack": {"name": "silent"}, "aggregator": {"name": "median"}}))
    assert silent.rows[-1]["step"] == 40 and silent.rows[-1]["test_acc"] > 0.8  # 8 silent workers time out


@pytest.mark.slow
def test_ps_waiting_for_all_on_ray_times_out_silent_workers(ray_cluster, tmp_path):
    sync = {"nodes": SYNC_17, "ps": {"wait": "all"}, "runtime": "ray", "ray": {"actors": 3}, "steps": 20}
    config = ps_config(**sync, eval_every=10, aggregator={"name": "median"}, attack={"name": "silent", "count": 3})
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["status"] == "finished" and result.rows[-1]["step"] == 20


def test_ps_describe_names_what_the_server_waits_for():
    assert PROTOCOLS["ps"].describe(ps_config()) == {"q_w": 5}  # n_w - f_w = 7 - 2
    waiting = ps_config(nodes=SYNC_17, aggregator={"name": "median"}, ps={"wait": "all", "timeout": 3.5})
    assert PROTOCOLS["ps"].describe(waiting) == {"wait": "all", "timeout": 3.5}


def test_ps_window_must_be_at_least_one():
    assert ps_config(ps={"window": 1}).options.window == 1
    with pytest.raises(ConfigError, match="ps.window=0: must be at least 1"):
        ps_config(ps={"window": 0})


def test_a_waiting_server_times_its_first_step_and_keeps_a_float32_model():
    config = ps_config(nodes=SYNC_17, aggregator={"name": "median"}, ps={"wait": "all", "timeout": 3.5})
    server = build(config, "ps0")
    out = server.start()
    assert [(m.sender, m.kind, m.round) for m in out] == [("ps0", "model", 0)] * 17 + [("ps0", "timeout", 0)]
    assert timer_delay(out[-1]) == 3.5
    d = server.vector.numel()
    gradients = np.random.default_rng(0).normal(size=(17, d)).astype(np.float32)
    # Round 1's gradients come early; round 0 then completes on its timeout with 9 of 17 (NaN rows
    # for the silent ones), and round 1, already complete, steps in the same call.
    for i in range(17):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 1, gradients[i]))
    for i in range(9):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, gradients[i]))
    out = server.on_message(out[-1])
    assert server.step == 2 and server.vector.dtype == torch.float32
    assert [(m.sender, m.kind, m.round) for m in out] == (
        [("ps0", "model", 1)] * 17 + [("ps0", "timeout", 1)] + [("ps0", "model", 2)] * 17 + [("ps0", "timeout", 2)]
    )
    assert server.on_message(Message("w9", "ps0", "gradient", 0, gradients[9])) == []  # round 0 is over
    assert server.rejected == {"stale": 1}


def test_ps_needs_a_correct_worker_and_a_positive_timeout():
    with pytest.raises(ConfigError, match="nodes.f_w=3: at least one of the n_w=3 workers must be correct"):
        ps_config(nodes={"n_ps": 1, "f_ps": 0, "n_w": 3, "f_w": 3}, aggregator={"name": "mean"})
    assert ps_config(ps={"timeout": 0.5}).options.timeout == 0.5
    with pytest.raises(ConfigError, match=r"ps.timeout=0.0: must be > 0 \(network time units\)"):
        ps_config(ps={"timeout": 0.0})
