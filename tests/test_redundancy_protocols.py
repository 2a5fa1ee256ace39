"""DRACO, DETOX/ByzShield and Solon as protocols: the server recovers what the codes promise
from real worker messages, the runs train under attack, and bad settings fail clearly."""

import numpy as np
import pytest
import torch

from byzsgd.data import BatchSampler, partition
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message
from byzsgd.protocols import PROTOCOLS
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from byzsgd.training import Workload
from tests.conftest import make_config


def one_server(n_w, f_w):
    return {"n_ps": 1, "f_ps": 0, "n_w": n_w, "f_w": f_w}


SETTINGS = {
    "draco-repetition": dict(protocol="draco", nodes=one_server(9, 1)),
    "draco-cyclic": dict(protocol="draco", draco={"code": "cyclic"}, nodes=one_server(7, 2)),
    "solon": dict(protocol="solon", solon={"compression": 2}, nodes=one_server(8, 1)),
}


def honest_partition_gradients(config, count, vector):
    """Every partition's gradient at ``vector``, computed without any protocol code."""
    workload = Workload(config)
    shards = partition(workload.data.y_train, count, config.data.partition, config.data.alpha, config.seed)
    grads = []
    for p, shard in enumerate(shards):
        batch = BatchSampler(shard, config.data.batch_size, config.seed * 1_000_003 + p).next()
        grads.append(workload.gradient(vector, batch)[0].numpy().astype(np.float64))
    return np.stack(grads)


def one_round(config, byzantine, forge):
    """Workers answer the server's first model; ``byzantine`` ones send ``forge(payload)``."""
    protocol = PROTOCOLS[config.protocol]
    workload = Workload(config)
    server = protocol.make_node(config, "ps0", workload)
    models = server.start()
    rng = np.random.default_rng(7)
    order = rng.permutation(config.nodes.n_w)  # arrival order
    for i in order:
        worker = protocol.make_node(config, f"w{i}", workload)
        (message,) = worker.on_message(models[i])
        payload = forge(message.payload, rng) if i in byzantine else message.payload
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, payload))
    return server


def garbage(payload, rng):
    return (rng.normal(size=payload.shape) * 1e3).astype(payload.dtype)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_server_recovers_the_exact_honest_gradient_sum_despite_garbage(name):
    config = make_config(**SETTINGS[name])
    f_w = config.nodes.f_w
    byzantine = set(range(1, 1 + f_w))
    server = one_round(config, byzantine, garbage)
    assert server.step == 1
    scheme = server.scheme
    expected = honest_partition_gradients(config, scheme.num_partitions, Workload(config).initial_vector())
    recovered = server.last_aggregate * scheme.num_partitions
    np.testing.assert_allclose(recovered, expected.sum(0), rtol=1e-6, atol=1e-6)


def test_detox_votes_each_file_then_applies_the_rule_over_file_votes():
    # n_w=9 in groups of 3, one Byzantine worker: it cannot win a vote (c_max(1) = 0), so the
    # median over the 3 file votes is the median of the honest file gradients.
    config = make_config(protocol="detox", nodes=one_server(9, 1), aggregator={"name": "median"})
    server = one_round(config, {4}, garbage)
    expected = honest_partition_gradients(config, 3, Workload(config).initial_vector())
    np.testing.assert_allclose(server.last_aggregate, np.median(expected, axis=0), rtol=1e-6, atol=1e-7)


def test_detox_waits_for_a_strict_majority_of_each_file():
    config = make_config(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "median"})
    protocol, workload = PROTOCOLS["detox"], Workload(config)
    server = protocol.make_node(config, "ps0", workload)
    models = server.start()
    payloads = {i: protocol.make_node(config, f"w{i}", workload).on_message(models[i])[0].payload for i in range(9)}
    # Group 0 (w0, w1, w2): two garbage copies that disagree, then the honest one.
    rng = np.random.default_rng(0)
    arrivals = [(0, payloads[0]), (1, garbage(payloads[1], rng)), (2, garbage(payloads[2], rng))]
    arrivals += [(i, payloads[i]) for i in range(3, 9)]
    for i, payload in arrivals[:-1]:
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, payload))
    assert server.step == 0  # file 0 has no majority and one worker is still to come
    server.on_message(Message("w8", "ps0", "gradient", 0, payloads[8]))
    assert server.step == 1  # everyone heard: file 0 takes its plurality (a tie: the first copy)


def test_detox_hierarchical_stage_takes_the_rule_over_bucket_means_of_the_file_votes():
    # 15 workers in 5 groups of 3, one Byzantine (it cannot win a vote): 5 honest file votes,
    # shuffled and averaged in 2 buckets (3 + 2 votes), then the median of the 2 bucket means.
    config = make_config(
        protocol="detox", nodes=one_server(15, 1), aggregator={"name": "median"}, detox={"buckets": 2}
    )
    server = one_round(config, {4}, garbage)
    votes = honest_partition_gradients(config, 5, Workload(config).initial_vector())
    order = np.random.default_rng([config.seed, 2019]).permutation(5)
    means = [votes[bucket].mean(axis=0) for bucket in np.array_split(order, 2)]
    np.testing.assert_allclose(server.last_aggregate, np.median(means, axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(server.last_aggregate, np.median(votes, axis=0))  # not the flat rule
    with pytest.raises(ConfigError, match="detox.buckets=6: must be between 1 and the 5 files"):
        make_config(protocol="detox", nodes=one_server(15, 1), detox={"buckets": 6})
    with pytest.raises(ConfigError, match="among 2 buckets, which needs 3"):  # c_max(2) = 1 needs 3 for the median
        make_config(protocol="detox", nodes=one_server(15, 2), aggregator={"name": "median"}, detox={"buckets": 2})


def test_ramanujan_case_2_is_reachable_from_the_config():
    sections = dict(protocol="detox", nodes=one_server(9, 1), aggregator={"name": "median"})
    config = make_config(detox={"assignment": "ramanujan", "replication": 3, "load": 6}, **sections)
    described = PROTOCOLS["detox"].describe(config)
    assert described["assignment"] == "ramanujan2(m=6, s=3)" and described["files"] == 18 and described["load"] == 6
    server = one_round(config, {4}, garbage)  # one Byzantine copy never wins a vote of 3
    votes = honest_partition_gradients(config, 18, Workload(config).initial_vector())
    np.testing.assert_allclose(server.last_aggregate, np.median(votes, axis=0), rtol=1e-5, atol=1e-7)
    default = make_config(detox={"assignment": "ramanujan", "replication": 3}, **sections)
    assert PROTOCOLS["detox"].describe(default)["files"] == 9  # m = s by default
    with pytest.raises(ConfigError, match="s \\| m"):
        make_config(detox={"assignment": "ramanujan", "replication": 3, "load": 4}, **sections)
    with pytest.raises(ConfigError, match="detox.load applies to the Ramanujan case 2 only"):
        sections["nodes"] = one_server(6, 1)
        make_config(detox={"assignment": "ramanujan", "replication": 2, "load": 4}, **sections)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


RUNS = {
    **SETTINGS,
    "detox": dict(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "median"}),
    "byzshield-mols": dict(
        protocol="detox",
        detox={"assignment": "mols", "replication": 2},
        nodes=one_server(6, 1),
        aggregator={"name": "median"},
    ),
    "detox-buckets": dict(
        protocol="detox", detox={"buckets": 3}, nodes=one_server(15, 2), aggregator={"name": "median"}
    ),
    "byzshield-ramanujan2": dict(
        protocol="detox",
        detox={"assignment": "ramanujan", "replication": 3, "load": 3},
        nodes=one_server(9, 2),
        aggregator={"name": "median"},
    ),
    "byzshield-ramanujan": dict(
        protocol="detox",
        detox={"assignment": "ramanujan", "replication": 2},
        nodes=one_server(6, 1),
        aggregator={"name": "median"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("attack", ["gaussian", "signflip"])
def test_training_beats_chance_with_f_w_byzantine_workers(name, attack, in_tmp):
    config = make_config(steps=30, eval_every=10, attack={"name": attack, "params": {}}, **RUNS[name])
    result = run_experiment(config)
    assert len(result.summary["byzantine"]) == config.nodes.f_w
    assert result.rows[-1]["step"] == 30 and result.rows[-1]["test_acc"] > 0.8


def test_detox_worst_case_adversary_distorts_c_max_files():
    config = make_config(
        protocol="detox",
        detox={"assignment": "mols"},
        nodes=one_server(15, 3),
        attack={"name": "signflip"},
        aggregator={"name": "median"},
    )
    summary = PROTOCOLS["detox"].describe(config)
    byzantine = FaultInjector(config).byzantine
    assignment = PROTOCOLS["detox"].make_scheme(config, 2).assignment
    distorted = assignment.distorted_files(int(w[1:]) for w in byzantine)
    assert len(byzantine) == 3 and len(distorted) == summary["c_max"] > 0
    assert summary["c_max"] <= summary["eigenvalue_bound"]
    random = make_config(
        protocol="detox",
        detox={"assignment": "mols", "adversary": "random"},
        nodes=one_server(15, 3),
        attack={"name": "signflip"},
        aggregator={"name": "median"},
    )
    assert len(assignment.distorted_files(int(w[1:]) for w in FaultInjector(random).byzantine)) <= summary["c_max"]


def test_solon_messages_are_r_c_times_shorter_than_gradients():
    config = make_config(protocol="solon", solon={"compression": 4}, nodes=one_server(6, 1))
    workload = Workload(config)
    worker = PROTOCOLS["solon"].make_node(config, "w0", workload)
    model = workload.initial_vector().numpy()
    (message,) = worker.on_message(Message("ps0", "w0", "model", 0, model))
    d = workload.dimension
    assert message.payload.dtype == np.float32 and message.payload.size == 2 * -(-d // 8)
    assert message.payload.nbytes == 4 * 2 * -(-d // 8) <= model.nbytes / 4 + 8  # 4 d / r_c bytes against 4 d


def test_solon_float32_messages_decode_to_the_float64_sum_within_float32_rounding():
    config = make_config(protocol="solon", solon={"compression": 2}, nodes=one_server(12, 2))
    scheme = PROTOCOLS["solon"].make_scheme(config, Workload(config).dimension)
    exact = honest_partition_gradients(config, scheme.num_partitions, Workload(config).initial_vector()).mean(axis=0)
    subtle = lambda payload, rng: (payload * np.float32(1.001)).astype(np.float32)  # noqa: E731
    for forge in (garbage, subtle):  # one forged message in each group of 6 (r = 2 s + r_c)
        server = one_round(config, byzantine={1, 7}, forge=forge)
        assert server.step == 1
        assert np.linalg.norm(server.last_aggregate - exact) <= 1e-6 * np.linalg.norm(exact)


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        (dict(protocol="draco", nodes=one_server(7, 2)), r"draco.code=repetition .*divisible by r = 2s\+1 = 5"),
        (dict(protocol="draco", draco={"code": "cyclic"}, nodes=one_server(4, 2)), "n >= 2s\\+1 = 5"),
        (dict(protocol="draco", nodes={"n_ps": 3, "f_ps": 0, "n_w": 9, "f_w": 1}), "set nodes.n_ps=1"),
        (dict(protocol="solon", solon={"load": 4}, nodes=one_server(8, 2)), "solon.load=4.*r >= 2s \\+ r_c = 6"),
        (dict(protocol="solon", nodes=one_server(8, 2)), "solon.load=6.*n=8 must be a multiple of r"),
        (dict(protocol="detox", detox={"assignment": "mols"}, nodes=one_server(12, 1)), "prime order"),
        (dict(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "multikrum"}), "c_max=1 distorted"),
        (dict(protocol="detox", detox={"replication": 4}, nodes=one_server(9, 1)), "multiple of the replication"),
    ],
)
def test_bad_settings_are_clear_config_errors(sections, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**sections)


@pytest.mark.slow
def test_mu2sgd_momentum_is_kept_per_partition_and_decodes_exactly(in_tmp):
    config = make_config(
        steps=20, optimizer={"name": "mu2sgd", "lr": 0.1}, attack={"name": "gaussian"}, **SETTINGS["draco-cyclic"]
    )
    rows = run_experiment(config).rows
    assert rows[-1]["test_acc"] > 0.8


def test_server_counts_a_rejected_message_as_heard():
    config = make_config(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "median"})
    protocol, workload = PROTOCOLS["detox"], Workload(config)
    server = protocol.make_node(config, "ps0", workload)
    models = server.start()
    for i in range(9):
        payload = protocol.make_node(config, f"w{i}", workload).on_message(models[i])[0].payload
        if i in (0, 1):
            payload = np.full_like(payload, np.nan)  # rejected by the inbox
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, payload))
    assert server.step == 1 and server.rejected["non_finite"] == 2
    assert torch.isfinite(server.vector).all()


@pytest.mark.slow
def test_draco_cyclic_float64_messages_cross_ray(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray", steps=20, eval_every=10, attack={"name": "gaussian"}, **SETTINGS["draco-cyclic"]
    )
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["status"] == "finished" and len(result.summary["byzantine"]) == 2
    assert result.rows[-1]["step"] == 20 and result.rows[-1]["test_acc"] > 0.5
    assert result.rows[-1].get("rejected_malformed", 0) == 0  # the forged float64 messages reached the decoder


def test_attacks_on_float64_channels_keep_the_channel_dtype():
    config = make_config(attack={"name": "gaussian"}, **SETTINGS["draco-cyclic"])
    injector = FaultInjector(config)
    sender = injector.byzantine[0]
    honest = np.arange(8, dtype=np.float64)
    ((forged, _),) = injector.corrupt([Message(sender, "ps0", "gradient", 0, honest)])
    assert forged.payload.dtype == np.float64 and not np.array_equal(forged.payload, honest)
