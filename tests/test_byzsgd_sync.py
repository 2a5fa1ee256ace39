"""Synchronous ByzSGD: the worker's rotation and its Lipschitz and outlier filters, driven
message by message, and whole runs in the in-process runtime."""

import numpy as np
import pytest
import torch

from byzsgd.faults import FaultInjector
from byzsgd.messages import Message, broadcast, timer, timer_delay
from byzsgd.optim import make_estimator
from byzsgd.protocols import PROTOCOLS
from byzsgd.protocols.byzsgd_sync import PULL, ByzSGDSyncServer, outlier_bound_factor, sorted_percentile
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.training import Workload
from tests.conftest import make_config

SERVERS = [f"ps{i}" for i in range(5)]
WORKERS = [f"w{i}" for i in range(7)]
LR = 0.2


def sync_config(**sections):
    options = {"period": 10, "warmup": 3, **sections.pop("byzsgd-sync", {})}
    return make_config(protocol="byzsgd-sync", optimizer={"lr": LR}, **{"byzsgd-sync": options}, **sections)


def deliver(worker, step, models):
    """Hand the worker each server's model for ``step`` (in server order); returns what it sent."""
    out = []
    for server, payload in models.items():
        out += worker.on_message(broadcast(server, [worker.node_id], "model", step, payload)[0])
    return out


def honest_models(x, workload, step, seed):
    """What correct servers would hold: x minus lr times a gradient on some other batch, slightly different each."""
    rng = np.random.default_rng(seed)
    g, _ = workload.gradient(x, rng.choice(len(workload.data.y_train), 16, replace=False))
    return {s: (x - LR * g).numpy() + rng.normal(0, 1e-4, x.numel()).astype(np.float32) for s in SERVERS}


def test_outlier_bound_factor_is_the_papers():
    assert outlier_bound_factor(1, 10, 10, 3) == pytest.approx(32 * 7 / 12)
    assert outlier_bound_factor(5, 10, 10, 3) == pytest.approx(32 * 7 / 12 + 8)
    assert outlier_bound_factor(11, 10, 10, 3) == pytest.approx(32 * 7 / 12)  # resets after a Gather
    assert outlier_bound_factor(3, 10, 7, 0) == float("inf")


def start(config, node_id="w0"):
    workload = Workload(config)
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, node_id, workload)
    assert {m.receiver for m in worker.start() if m.kind == "pull"} == set(SERVERS)  # step 0 is a Gather
    x0 = workload.initial_vector()
    deliver(worker, 0, {s: x0.numpy() for s in SERVERS[:4]})  # a Gather step: the median of q_ps = 4
    assert worker.accepted_from == ["median"]
    return worker, workload


def test_the_sync_filters_reject_an_equivocating_servers_poisoned_model():
    config = sync_config(
        server_attack={"name": "equivocation", "params": {"poison_params": {"scale": 4.0}}, "ids": [1]},
        **{"byzsgd-sync": {"period": 3}},
    )
    injector = FaultInjector(config)
    for node_id, poisoned in [("w1", True), ("w0", False)]:  # equivocation poisons odd-numbered receivers
        worker, workload = start(config, node_id)
        models = honest_models(worker.previous[0], workload, 1, seed=1)
        # Step 1: the rotation asks ps1 first, which is Byzantine and equivocates.
        lie = {m.receiver: m.payload for m, _ in injector.corrupt(broadcast("ps1", WORKERS, "model", 1, models["ps1"]))}
        models["ps1"] = lie[node_id]
        out = deliver(worker, 1, models)
        sent = [m for m in out if m.kind == "gradient"]
        assert worker.accepted_from == ["median", "ps2" if poisoned else "ps1"]
        # The worker pulled ps1, and ps2 only after the filter rejected ps1's model; then step 2's server.
        assert [m.receiver for m in out if m.kind == "pull"] == (["ps2"] if poisoned else []) + ["ps2"]
        assert worker.asked == ["ps2"] and worker.step == 2
        assert worker.rejected["filter_outlier"] == int(poisoned)
        # Independent check: the gradient sent is the one at the accepted model on this step's batch.
        sampler = workload.sampler(int(node_id[1:]))
        sampler.next()
        expected, _ = Workload(config).gradient(torch.from_numpy(models[worker.accepted_from[1]]), sampler.next())
        np.testing.assert_allclose(sent[0].payload, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_the_lipschitz_filter_rejects_a_stale_model_that_the_outlier_filter_lets_through():
    config = sync_config()
    worker, workload = start(config)
    for step in range(1, 4):  # fill the k history (warmup = 3) with honest models
        deliver(worker, step, honest_models(worker.previous[0], workload, step, seed=step))
    assert worker.rejected["filter_lipschitz"] == 0
    x_prev, g_prev = worker.previous
    models = honest_models(x_prev, workload, 4, seed=4)
    # Step 4 asks ps4 first; it arrives first and replays the worker's last accepted model.
    models = {"ps4": x_prev.numpy().copy(), **{s: models[s] for s in SERVERS[:3]}}
    # The outlier filter alone would accept it: it is lr ||g|| from the expected model.
    assert np.linalg.norm(models["ps4"] - (x_prev - LR * g_prev).numpy()) <= LR * g_prev.norm() * 20
    seen = len(worker.lipschitz_history)
    deliver(worker, 4, models)
    assert len(worker.lipschitz_history) > seen
    assert worker.lipschitz_history[-1] == float("inf")  # no move, a new gradient: k is unbounded
    assert worker.rejected["filter_lipschitz"] >= 1 and worker.rejected["filter_outlier"] == 0
    assert worker.accepted_from[-1] in SERVERS[:3]


def test_gather_steps_take_the_median_of_the_servers():
    config = sync_config(**{"byzsgd-sync": {"period": 2}})
    worker, workload = start(config)
    deliver(worker, 1, honest_models(worker.previous[0], workload, 1, seed=1))
    models = {s: np.full(workload.dimension, float(i), np.float32) for i, s in enumerate(SERVERS)}
    deliver(worker, 2, models)
    assert worker.accepted_from[-1] == "median"
    np.testing.assert_allclose(worker.previous[0].numpy(), np.full(workload.dimension, 1.5))  # first 4 arrived


def run(**sections):
    return run_experiment(sync_config(**{"steps": 30, "eval_every": 10, **sections})).rows


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_sync_run_trains_and_its_filters_reject_an_equivocating_server():
    poison = {"name": "equivocation", "params": {"poison_params": {"scale": 4.0}}}
    rows = run(server_attack=poison, attack={"name": "gaussian", "params": {"std": 100.0}})
    assert rows[-1]["step"] == 30 and rows[-1]["test_acc"] > 0.8
    assert rows[-1]["rejected_filter_outlier"] > 0
    honest = run()
    assert honest[-1]["test_acc"] > 0.8 and honest[-1].get("rejected_filter_outlier", 0) == 0


def test_sorted_percentile_is_numpys_linear_percentile():
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, 50, 201):
        values = sorted(rng.exponential(size=size).tolist() + [0.0] * (size % 3))
        for q in (0.0, 12.5, 50.0, 80.0, 99.0, 100.0):
            assert sorted_percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=0)
    assert sorted_percentile([1.0, float("inf"), float("inf")], 80.0) == float("inf")
    assert sorted_percentile([1.0, 2.0, float("inf")], 80.0) == float("inf")


def test_a_poisoned_near_float32_max_model_is_rejected_without_poisoning_the_lipschitz_history():
    config = sync_config()
    worker, workload = start(config)
    for step in range(1, 4):
        deliver(worker, step, honest_models(worker.previous[0], workload, step, seed=step))
    models = honest_models(worker.previous[0], workload, 4, seed=4)
    huge = {"ps4": np.full(workload.dimension, 3e38, np.float32)}  # step 4 asks ps4 first
    seen = len(worker.lipschitz_history)
    out = deliver(worker, 4, huge)
    assert worker.rejected["filter_non_finite"] == 1 and worker.step == 4
    assert [m.receiver for m in out if m.kind == "pull"] == ["ps0"]  # it asks the next server
    assert len(worker.lipschitz_history) == seen and all(not np.isnan(k) for k in worker.lipschitz_history)
    deliver(worker, 4, {s: models[s] for s in SERVERS[:4]})
    assert worker.step == 5
    history = worker.lipschitz_history
    assert history == sorted(history) and not np.isnan(sorted_percentile(history, worker.percentile))


def test_a_server_that_never_answers_is_skipped_after_the_pull_timeout():
    config = sync_config(**{"byzsgd-sync": {"pull_timeout": 4.0}})
    workload = Workload(config)
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", workload)
    worker.start()
    out = deliver(worker, 0, {s: workload.initial_vector().numpy() for s in SERVERS[:4]})
    # Step 1 asks ps1 alone, with a timer back to the worker itself.
    assert [(m.kind, m.receiver) for m in out if m.kind != "gradient"] == [("pull", "ps1"), ("timeout", "w0")]
    assert timer_delay(out[-1]) == 4.0
    out = worker.on_message(out[-1])  # ps1 stays silent: the timer fires
    assert [m.receiver for m in out if m.kind == "pull"] == ["ps2"] and worker.asked == ["ps1", "ps2"]
    assert worker.on_message(timer("w0", 1, 4.0, tag=1)) == []  # an outdated timer does nothing
    forged = broadcast("ps0", ["w0"], "timeout", 1, np.array([0.0, 2.0], np.float32))[0]
    assert worker.on_message(forged) == [] and worker.asked == ["ps1", "ps2"]  # only its own timers count
    deliver(worker, 1, {"ps2": honest_models(worker.previous[0], workload, 1, seed=1)["ps2"]})
    assert worker.accepted_from[-1] == "ps2" and worker.step == 2


def test_sync_sends_fewer_messages_per_step_than_async_and_survives_a_silent_server():
    async_rows = run_experiment(make_config(protocol="byzsgd", steps=6, eval_every=6, byzsgd={"period": 10})).rows
    sync_rows = run(steps=6, eval_every=6)
    assert sync_rows[-1]["messages"] < 0.9 * async_rows[-1]["messages"]  # 357 against 420, measured
    silent = run(steps=12, eval_every=12, server_attack={"name": "silent", "ids": [1]})
    assert silent[-1]["step"] == 12  # ps1 never answers: workers time out and ask the next server


@pytest.mark.slow
def test_sync_on_ray_times_out_a_silent_server_and_trains(ray_cluster, tmp_path):
    config = sync_config(
        runtime="ray", steps=20, eval_every=10, ray={"actors": 3}, server_attack={"name": "silent", "ids": [1]}
    )
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["status"] == "finished" and result.rows[-1]["step"] == 20
    assert result.rows[-1]["test_acc"] > 0.5


def pull(sender, step, receiver="ps0"):
    return Message(sender, receiver, "pull", step, PULL)


def test_a_sync_server_answers_each_workers_pull_once_and_counts_every_bad_pull():
    config = sync_config(**{"byzsgd-sync": {"window": 2}})
    server = PROTOCOLS["byzsgd-sync"].make_node(config, "ps0", Workload(config))
    assert server.on_message(pull("w0", 0)) == []  # nothing published before start: the pull waits
    out = server.start()
    assert [(m.receiver, m.kind, m.round) for m in out] == [("w0", "model", 0)]
    np.testing.assert_array_equal(out[0].payload, server.vector.numpy())
    assert server.on_message(pull("w0", 0)) == server.on_message(pull("w3", -1)) == []  # a replay, no step: stale
    assert server.on_message(pull("ps1", 0)) == server.on_message(pull("w99", 0)) == []  # not workers
    assert server.on_message(pull("w1", 3)) == server.on_message(pull("w1", 4)) == []  # beyond the window
    assert server.on_message(pull("w2", 2)) == []  # within the window: answered once the server is there
    assert server.rejected == {"stale": 2, "unexpected_sender": 2, "future": 2}
    assert server.pulls == {2: ["w2"]}


def test_a_sync_server_built_directly_answers_pulls():
    config = sync_config()
    workload = Workload(config)
    vector = workload.initial_vector()
    server = ByzSGDSyncServer(
        "ps0", vector, servers=SERVERS, workers=WORKERS, aggregator=lambda x: x.mean(0), model_rule=lambda x: x[0],
        optimizer=None, q_w=5, q_ps=4, period=10, steps=3, report_every=1, window=8,
    )
    server.start()
    (answer,) = server.on_message(pull("w3", 0))
    assert (answer.receiver, answer.round) == ("w3", 0) and np.array_equal(answer.payload, vector.numpy())


def test_a_sync_worker_that_has_the_next_steps_model_runs_both_steps_at_once():
    config = sync_config()
    workload = Workload(config)
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", workload)
    worker.start()
    x0 = workload.initial_vector()
    next_model = honest_models(x0, workload, 1, seed=1)["ps1"]  # step 1 asks ps1 first
    assert deliver(worker, 1, {"ps1": next_model}) == []  # early: kept for step 1
    out = deliver(worker, 0, {s: x0.numpy() for s in SERVERS[:4]})
    assert worker.step == 2 and worker.accepted_from == ["median", "ps1"]
    assert {m.sender for m in out} == {"w0"}
    gradients = [(m.round, m.receiver) for m in out if m.kind == "gradient"]
    assert gradients == [(0, s) for s in SERVERS] + [(1, s) for s in SERVERS]
    assert [(m.round, m.receiver) for m in out if m.kind == "pull"] == [(1, "ps1"), (2, "ps2")]
    assert worker.asked == ["ps2"]
    deliver(worker, 0, {"ps4": x0.numpy()})  # step 0 is over: a late model for it is stale
    assert worker.rejected["stale"] == 1


def test_a_sync_worker_at_a_gather_step_asks_every_server():
    config = sync_config()
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", Workload(config))
    out = worker.start()
    assert worker.asked == SERVERS
    assert [(m.sender, m.receiver, m.kind, m.round) for m in out] == [("w0", s, "pull", 0) for s in SERVERS]


def test_a_sync_worker_sends_its_estimators_vector_not_the_raw_gradient():
    # mu^2-SGD's worker sends its corrected momentum, computed at each accepted model on the step's batch.
    config = make_config(
        protocol="byzsgd-sync", optimizer={"name": "mu2sgd", "lr": 0.2}, **{"byzsgd-sync": {"period": 10}}
    )
    workload = Workload(config)
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", workload)
    worker.start()
    x0 = workload.initial_vector()
    deliver(worker, 0, {s: x0.numpy() for s in SERVERS[:4]})
    x1 = honest_models(x0, workload, 1, seed=1)["ps1"]  # step 1 asks ps1 first
    out = deliver(worker, 1, {"ps1": x1})
    assert worker.accepted_from == ["median", "ps1"]
    estimator, sampler = make_estimator(config.optimizer), workload.sampler(0)
    estimator(workload, x0, sampler.next())
    batch = sampler.next()
    expected, _ = estimator(workload, torch.from_numpy(x1), batch)
    raw, _ = workload.gradient(torch.from_numpy(x1), batch)
    sent = [m.payload for m in out if m.kind == "gradient"][0]
    np.testing.assert_allclose(sent, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(sent, raw.numpy(), rtol=1e-3, atol=1e-5)


def filter_worker(**options):
    """A sync worker past its Gather step 0, at step 1, whose last accepted model is 0 with gradient 10 e_0."""
    config = sync_config(**{"byzsgd-sync": options})  # n_w = 7, f_w = 2, T = 10, lr = 0.2
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", Workload(config))
    d = worker.workload.dimension
    worker.step = 1
    worker.previous = (torch.zeros(d), 10 * unit(d, 0))
    return worker, d


def unit(d, i):
    e = torch.zeros(d)
    e[i] = 1.0
    return e


def test_the_lipschitz_filter_records_kardams_k_and_accepts_up_to_the_percentile():
    worker, d = filter_worker()
    assert worker.percentile == 80.0  # 100 (n_ps - f_ps) / n_ps
    x_prev, g_prev = worker.previous
    # k = ||g - g_prev|| / ||x - x_prev||: a move of 2 with a gradient change of 6 gives 3.
    assert worker.passes(x_prev + 2 * unit(d, 1), g_prev + 6 * unit(d, 2))
    # No move and no gradient change: k = 0, not a division by zero.
    assert worker.passes(x_prev.clone(), g_prev.clone())
    assert worker.lipschitz_history == [0.0, 3.0]
    worker.lipschitz_history = [3.0, 3.0, 3.0]  # past the warmup: the 80th percentile is 3
    assert worker.passes(x_prev + unit(d, 1), g_prev + 3 * unit(d, 2))  # k = 3 <= 3: accepted
    assert not worker.passes(x_prev + unit(d, 1), g_prev + 4 * unit(d, 2))  # k = 4 > 3
    assert not worker.passes(x_prev + unit(d, 1), g_prev + 5 * unit(d, 2))
    assert worker.rejected == {"filter_lipschitz": 2}


def test_the_outlier_filter_bounds_the_distance_to_the_workers_own_step():
    worker, d = filter_worker(warmup=100)
    x_prev, g_prev = worker.previous
    expected = x_prev - 0.2 * g_prev  # where the worker's own gradient takes its last model: -2 e_0
    # bound = lr ||g_prev|| ((3T+2)(n_w-f_w)/(4 f_w) + 2((t-1) mod T)) = 2 * 20 = 40 at t = 1
    assert worker.passes(expected + 40 * unit(d, 1), g_prev)  # on the bound: accepted
    assert worker.passes(expected - 38 * unit(d, 0), g_prev)  # 38 from x_prev - lr g, 42 from x_prev + lr g
    assert not worker.passes(expected + 41 * unit(d, 1), g_prev)
    assert not worker.passes(expected - 41 * unit(d, 1), g_prev)
    assert worker.rejected == {"filter_outlier": 2}


def test_a_model_or_gradient_that_is_not_finite_is_rejected_before_any_k():
    worker, d = filter_worker()
    x_prev, g_prev = worker.previous
    huge = torch.full((d,), 3e38)
    assert not worker.passes(huge, g_prev)  # the distance overflows, the gradient change is finite
    assert not worker.passes(x_prev + unit(d, 1), g_prev + huge)  # the other way round
    assert worker.rejected == {"filter_non_finite": 2} and worker.lipschitz_history == []


def test_when_every_server_was_rejected_the_worker_takes_the_median_of_the_answers():
    config = sync_config()
    worker, workload = start(config)
    x_prev = worker.previous[0]
    far = {s: (x_prev + 1e3 * (i + 1)).numpy() for i, s in enumerate(SERVERS)}  # every one an outlier
    order = SERVERS[1:] + SERVERS[:1]  # step 1 starts its rotation at ps1
    for server in order[:4]:
        deliver(worker, 1, {server: far[server]})
    # the 4th rejection asked the last server (ps0), but q_ps = 4 answers are in: no need to wait for it
    assert worker.step == 2 and worker.accepted_from[-1] == "median"
    assert worker.rejected == {"filter_outlier": 4, "filter_fallback": 1}
    first = np.stack([far[s] for s in order[:4]])
    np.testing.assert_allclose(worker.previous[0].numpy(), np.median(first, axis=0), rtol=1e-6)
    for server in SERVERS[2:] + SERVERS[:1]:  # step 2 starts at ps2; again every model is an outlier
        deliver(worker, 2, {server: (worker.previous[0] + 1e3).numpy()})
    assert worker.step == 3 and worker.rejected["filter_fallback"] == 2


def test_sync_settings_checks():
    assert sync_config(**{"byzsgd-sync": {"warmup": 0, "pull_timeout": 0.5}}).options.warmup == 0
    with pytest.raises(ConfigError, match="byzsgd-sync.warmup=-1: must be >= 0"):
        sync_config(**{"byzsgd-sync": {"warmup": -1}})
    with pytest.raises(ConfigError, match=r"byzsgd-sync.pull_timeout=0.0: must be > 0 \(time units\)"):
        sync_config(**{"byzsgd-sync": {"pull_timeout": 0.0}})
