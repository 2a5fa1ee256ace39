"""ByzSGD node logic, driven message by message and in the deterministic in-process runtime."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from byzsgd.aggregators import make_aggregator
from byzsgd.messages import Message
from byzsgd.optim import make_estimator
from byzsgd.protocols import PROTOCOLS, base
from byzsgd.protocols.base import aggregate_payloads, stack_payloads, to_payload
from byzsgd.protocols.byzsgd import gather_period
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.runtime.local import StalledError
from byzsgd.training import Workload
from tests.conftest import make_config


def build(config, node_id):
    return PROTOCOLS[config.protocol].make_node(config, node_id, Workload(config))


def brute_force_mda(vectors: np.ndarray, f: int) -> np.ndarray:
    n = len(vectors)
    best, best_diameter = None, np.inf
    for subset in itertools.combinations(range(n), n - f):
        points = vectors[list(subset)]
        d = max(np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2))
        if d < best_diameter:
            best, best_diameter = points.mean(0), d
    return best


def test_worker_takes_the_gradient_at_the_median_of_the_first_quorum():
    config = make_config()
    worker = build(config, "w0")
    reference = Workload(config)
    sampler = reference.sampler(0)
    d = reference.dimension
    rng = np.random.default_rng(1)
    models = rng.normal(size=(5, d)).astype(np.float32)
    out = []
    for i in range(3):
        out += worker.on_message(Message(f"ps{i}", "w0", "model", 0, models[i]))
    assert out == []  # q_ps = 4 models are needed
    out = worker.on_message(Message("ps3", "w0", "model", 0, models[3]))
    assert [m.receiver for m in out] == [f"ps{i}" for i in range(5)]
    point = torch.from_numpy(np.median(models[:4], axis=0))  # even count: mean of the middle two
    expected, _ = reference.gradient(point, sampler.next())
    np.testing.assert_allclose(out[0].payload, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert worker.on_message(Message("ps4", "w0", "model", 0, models[4])) == []  # late model: round done


def test_server_steps_with_mda_of_the_first_quorum():
    config = make_config(optimizer={"lr": 0.5}, byzsgd={"period": 100})
    server = build(config, "ps0")
    start = server.vector.clone().numpy()
    d = start.size
    rng = np.random.default_rng(2)
    gradients = rng.normal(size=(7, d)).astype(np.float32)
    gradients[1] *= 50  # an outlier MDA must leave out
    out = []
    for i in range(5):  # q_w = n_w - f_w = 5
        out = server.on_message(Message(f"w{i}", "ps0", "gradient", 0, gradients[i]))
    assert server.step == 1 and len(out) == 7 and all(m.kind == "model" and m.round == 1 for m in out)
    expected = start - 0.5 * brute_force_mda(gradients[:5].astype(np.float64), f=2)
    np.testing.assert_allclose(server.vector.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_server_gathers_every_period_and_takes_the_median_of_q_ps_models():
    config = make_config(byzsgd={"period": 1})
    server = build(config, "ps0")
    d = server.vector.numel()
    for i in range(5):
        out = server.on_message(Message(f"w{i}", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    assert {m.kind for m in out} == {"gather"} and sorted(m.receiver for m in out) == ["ps1", "ps2", "ps3", "ps4"]
    own = server.vector.numpy().copy()
    others = np.random.default_rng(3).normal(size=(3, d)).astype(np.float32)
    for i, model in enumerate(others):
        out = server.on_message(Message(f"ps{i + 1}", "ps0", "gather", 1, model))
    assert [m.kind for m in out] == ["model"] * 7  # gather done after q_ps - 1 = 3 other servers
    np.testing.assert_allclose(server.vector.numpy(), np.median(np.vstack([own, others]), axis=0), rtol=1e-6)


def test_byzantine_payloads_do_not_crash_a_correct_server():
    config = make_config()
    server = build(config, "ps0")
    d = server.vector.numel()
    junk = [np.full(d, np.nan, np.float32), np.ones(d + 1, np.float32), np.ones(d, np.float64), "nope"]
    for payload in junk:
        assert server.on_message(Message("w0", "ps0", "gradient", 0, payload)) == []
    assert server.on_message(Message("w1", "ps0", "gradient", 10**9, np.ones(d, np.float32))) == []
    assert sum(server.rejected.values()) == 5 and server.step == 0


def run_local(**sections):
    return run_experiment(make_config(**sections), run_dir=None).rows


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_silent_byzantine_nodes_do_not_block_the_quorums():
    rows = run_local(attack={"name": "silent"}, server_attack={"name": "silent"})
    assert rows[-1]["step"] == 60
    assert rows[-1]["test_acc"] > 0.8


def test_fewer_live_nodes_than_a_quorum_stalls_with_a_clear_error():
    # Bypass validation to silence one more worker than the protocol tolerates: the servers
    # then wait forever for a 4th gradient, and the runtime must say so instead of hanging.
    config = make_config(nodes={"n_w": 4, "f_w": 1}, attack={"name": "silent", "count": 1})
    config.nodes.f_w = 0
    with pytest.raises(StalledError, match="stalled"):
        run_experiment(config)


def test_training_beats_chance_under_attack_with_mda_and_fails_with_plain_averaging():
    attack = {"name": "gaussian", "params": {"std": 100.0}}
    robust = run_local(attack=attack, server_attack={"name": "signflip", "params": {"scale": 4.0}})
    assert robust[-1]["test_acc"] > 0.8
    naive = run_local(
        attack=attack,
        server_attack={"name": "signflip", "params": {"scale": 4.0}},
        aggregator={"name": "mean"},
        byzsgd={"model_rule": "mean"},
    )
    assert naive[-1]["test_acc"] < 0.5


def test_dmc_contracts_the_correct_servers_models():
    # Servers start equal and drift apart because each aggregates a different quorum; the
    # Gather phase pulls them back together. With Byzantine servers present, compare T=1 to no gather.
    common = dict(
        steps=40,
        eval_every=10,
        attack={"name": "gaussian", "params": {"std": 1.0}},
        server_attack={"name": "gaussian", "params": {"std": 1.0}},
        network={"delay": 1.0, "jitter": 1.0},
    )
    with_dmc = run_local(byzsgd={"period": 1}, **common)
    without = run_local(byzsgd={"period": 1000}, **common)
    assert without[-1]["diameter"] > 0
    assert with_dmc[-1]["diameter"] < 0.5 * without[-1]["diameter"]


def test_local_runtime_is_deterministic():
    a = run_local(attack={"name": "signflip"})
    b = run_local(attack={"name": "signflip"})
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "steps_per_s")} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


@pytest.mark.parametrize(
    ("lr", "options", "period"),
    [
        (0.02, {}, 16),  # floor(1 / (3 L lr)) with L = 1
        (0.02, {"lipschitz": 2.0}, 8),
        (0.002, {}, 50),  # 166, capped at max_period
        (0.002, {"max_period": 100}, 100),
        (0.5, {}, 1),  # floor(2/3) = 0: at least 1
        (0.5, {"period": 7}, 7),  # an explicit T wins
    ],
)
def test_gather_period_is_the_prototypes_bound(lr, options, period):
    config = make_config(optimizer={"lr": lr}, byzsgd=options)
    assert gather_period(config) == period
    assert PROTOCOLS["byzsgd"].describe(config) == {"gather_period": period, "q_w": 5, "q_ps": 4}


def test_after_a_gather_the_server_sends_its_contracted_model_and_drops_late_peers():
    config = make_config(byzsgd={"period": 1})
    server = build(config, "ps0")
    d = server.vector.numel()
    for i in range(5):
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    for i in range(1, 4):
        out = server.on_message(Message(f"ps{i}", "ps0", "gather", 1, np.zeros(d, np.float32)))
    assert [(m.sender, m.kind, m.round) for m in out] == [("ps0", "model", 1)] * 7
    assert server.on_message(Message("ps4", "ps0", "gather", 1, np.zeros(d, np.float32))) == []  # late
    assert server.rejected == {"stale": 1}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"nodes": {"n_ps": 4, "f_ps": 1}}, "n_ps=4 cannot tolerate f_ps=1: ByzSGD needs n_ps >= 3*f_ps+2 = 5"),
        ({"nodes": {"n_ps": 7, "f_ps": 2}}, "n_ps=7 cannot tolerate f_ps=2: ByzSGD needs n_ps >= 3*f_ps+2 = 8"),
        ({"nodes": {"n_w": 6, "f_w": 2}}, "n_w=6 cannot tolerate f_w=2: ByzSGD needs n_w >= 3*f_w+1 = 7"),
        ({"nodes": {"n_w": 9, "f_w": 3}}, "n_w=9 cannot tolerate f_w=3: ByzSGD needs n_w >= 3*f_w+1 = 10"),
        ({"byzsgd": {"period": 0}}, "byzsgd.period=0: must be at least 1"),
        ({"byzsgd": {"lipschitz": 0.0}}, "byzsgd: lipschitz must be > 0, max_period and window >= 1"),
        ({"byzsgd": {"max_period": 0}}, "byzsgd: lipschitz must be > 0, max_period and window >= 1"),
        ({"byzsgd": {"window": 0}}, "byzsgd: lipschitz must be > 0, max_period and window >= 1"),
        ({"aggregator": {"name": "krum"}}, "aggregator.name='krum' with f=2 needs 7 inputs, but a quorum has 5"),
        ({"byzsgd": {"model_rule": "nope"}}, "byzsgd.model_rule: unknown aggregator 'nope'; known: arc, "),
        (
            {"byzsgd": {"model_rule": "bulyan"}},
            "byzsgd.model_rule='bulyan' with f=1 needs 7 inputs, but a quorum has 4",
        ),
    ],
)
def test_byzsgd_settings_it_cannot_run_are_config_errors(sections, message):
    with pytest.raises(ConfigError) as error:
        make_config(**sections)
    assert str(error.value).startswith(message)


def test_byzsgd_accepts_its_limits():
    config = make_config(nodes={"n_ps": 5, "f_ps": 1, "n_w": 7, "f_w": 2}, byzsgd={"max_period": 1, "window": 1})
    assert gather_period(config) == 1 and config.options.window == 1
    assert make_config(aggregator={"name": "krum"}, nodes={"n_w": 9, "f_w": 2}).aggregator.name == "krum"


def test_payloads_travel_as_float32_and_their_copies_are_counted(monkeypatch):
    monkeypatch.setattr(base, "copied_bytes", Counter())
    vector = torch.arange(3, dtype=torch.float64)
    payload = to_payload(vector)
    assert payload.dtype == np.float32 and payload.tolist() == [0.0, 1.0, 2.0]
    payload[0] = 5.0
    assert vector[0] == 0.0  # a copy
    to_payload(vector)
    # a float64 tensor (a node's own vector) among numpy payloads is stacked as float32 too
    stacked = stack_payloads([vector, np.ones(3, np.float32)], torch.device("cpu"))
    assert stacked.dtype == torch.float32 and stacked.tolist() == [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    stack_payloads([np.ones(3, np.float32)], torch.device("cpu"))
    assert base.copied_bytes == {"to_payload": 24, "stack_payloads": 36}


def test_aggregate_payloads_reads_rows_in_place_on_the_cpu(monkeypatch):
    monkeypatch.setattr(base, "copied_bytes", Counter())
    payloads = [np.full(3, v, np.float32) for v in (1.0, 2.0, 9.0)]
    own = torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64)  # a node's own vector joins as float32
    median = aggregate_payloads(make_aggregator("median", f=1), [own, *payloads], torch.device("cpu"))
    assert median.dtype == torch.float32 and median.tolist() == [3.0, 3.0, 3.0]
    assert base.copied_bytes == Counter()  # nothing stacked
    # A plain function gets the stacked matrix, as before.
    total = aggregate_payloads(lambda x: x.sum(0), payloads, torch.device("cpu"))
    assert total.tolist() == [12.0, 12.0, 12.0]
    assert base.copied_bytes == {"stack_payloads": 36}


def test_servers_report_every_eval_every_steps_and_the_last_step():
    config = make_config(steps=7, eval_every=3, byzsgd={"period": 100})
    server = build(config, "ps0")
    d = server.vector.numel()
    server.start()
    for step in range(7):
        for i in range(5):
            server.on_message(Message(f"w{i}", "ps0", "gradient", step, np.zeros(d, np.float32)))
    assert server.done and [step for step, _ in server.drain_reports()] == [0, 3, 6, 7]


def test_a_byzsgd_server_drops_late_and_far_future_gradients_and_names_itself():
    config = make_config(byzsgd={"period": 100, "window": 2})
    server = build(config, "ps0")
    d = server.vector.numel()
    assert {m.sender for m in server.start()} == {"ps0"}
    for i in range(5):
        out = server.on_message(Message(f"w{i}", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    assert server.step == 1 and {m.sender for m in out} == {"ps0"}
    assert server.on_message(Message("w5", "ps0", "gradient", 0, np.zeros(d, np.float32))) == []  # late
    assert server.on_message(Message("w5", "ps0", "gradient", 3, np.zeros(d, np.float32))) == []  # within 2
    assert server.on_message(Message("w5", "ps0", "gradient", 4, np.zeros(d, np.float32))) == []  # beyond
    assert server.rejected == {"stale": 1, "future": 1}


def test_a_scatter_step_and_the_gather_it_starts_can_finish_in_one_message():
    config = make_config(byzsgd={"period": 1})
    server = build(config, "ps0")
    d = server.vector.numel()
    for i in range(1, 4):  # the other servers' gather models for step 1 come first
        assert server.on_message(Message(f"ps{i}", "ps0", "gather", 1, np.zeros(d, np.float32))) == []
    for i in range(5):
        out = server.on_message(Message(f"w{i}", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    kinds = [(m.sender, m.kind, m.round) for m in out]
    assert kinds == [("ps0", "gather", 1)] * 4 + [("ps0", "model", 1)] * 7


def test_a_byzsgd_worker_handles_two_rounds_in_one_message_and_drops_late_models():
    config = make_config(byzsgd={"window": 2})
    worker = build(config, "w0")
    d = worker.workload.dimension
    model = np.zeros(d, np.float32)
    for i in range(4):
        assert worker.on_message(Message(f"ps{i}", "w0", "model", 1, model)) == []  # round 1 first
    for i in range(3):
        worker.on_message(Message(f"ps{i}", "w0", "model", 0, model))
    out = worker.on_message(Message("ps3", "w0", "model", 0, model))
    assert worker.step == 2 and math.isfinite(worker.last_loss)
    assert [(m.sender, m.round) for m in out] == [("w0", 0)] * 5 + [("w0", 1)] * 5
    assert worker.on_message(Message("ps4", "w0", "model", 0, model)) == []  # late
    assert worker.on_message(Message("ps4", "w0", "model", 5, model)) == []  # beyond the window of 2
    assert worker.rejected == {"stale": 1, "future": 1}


def test_a_fresh_worker_has_no_loss_yet():
    assert math.isnan(build(make_config(), "w0").last_loss)


def test_a_byzsgd_worker_sends_its_estimators_vector():
    # mu^2-SGD: from the second step on, the corrected momentum differs from the raw gradient.
    config = make_config(optimizer={"name": "mu2sgd", "lr": 0.2})
    worker = build(config, "w0")
    workload = worker.workload
    models = np.random.default_rng(4).normal(size=(2, workload.dimension)).astype(np.float32)
    out = []
    for step in range(2):
        for i in range(4):
            out = worker.on_message(Message(f"ps{i}", "w0", "model", step, models[step]))
    estimator, sampler = make_estimator(config.optimizer), workload.sampler(0)
    estimator(workload, torch.from_numpy(models[0]), sampler.next())
    batch = sampler.next()
    expected, _ = estimator(workload, torch.from_numpy(models[1]), batch)
    raw, _ = workload.gradient(torch.from_numpy(models[1]), batch)
    np.testing.assert_allclose(out[0].payload, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(out[0].payload, raw.numpy(), rtol=1e-3, atol=1e-5)
