"""DRACO, DETOX/ByzShield and Solon as protocols: the server recovers what the codes promise
from real worker messages, the runs train under attack, and bad settings fail clearly."""

import math

import numpy as np
import pytest
import torch

from byzsgd.coding import DecodingError
from byzsgd.data import BatchSampler, partition
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message
from byzsgd.protocols import PROTOCOLS
from byzsgd.protocols.coded import NotDecodable
from byzsgd.protocols.detox import SEARCHED, FileVoteScheme, build_assignment, distortable
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
    config = make_config(protocol="detox", nodes=one_server(15, 1), aggregator={"name": "median"}, detox={"buckets": 2})
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


def honest_payloads(config):
    """Every worker's honest step-0 message to the server, by worker index."""
    protocol, workload = PROTOCOLS[config.protocol], Workload(config)
    models = protocol.make_node(config, "ps0", workload).start()
    workers = [protocol.make_node(config, f"w{i}", workload) for i in range(config.nodes.n_w)]
    return {i: worker.on_message(models[i])[0].payload for i, worker in enumerate(workers)}


def test_describe_reports_each_coded_protocols_settings():
    draco = make_config(**SETTINGS["draco-repetition"])  # 9 workers in groups of 2s+1 = 3
    assert PROTOCOLS["draco"].describe(draco) == {"code": "repetition", "partitions": 3, "load": 1}
    cyclic = make_config(**SETTINGS["draco-cyclic"])  # worker j computes partitions j .. j+2s
    assert PROTOCOLS["draco"].describe(cyclic) == {"code": "cyclic", "partitions": 7, "load": 5}
    solon = make_config(**SETTINGS["solon"])  # r = 2 f_w + r_c by default
    assert PROTOCOLS["solon"].describe(solon) == {"load": 4, "compression": 2}
    detox = make_config(
        protocol="detox",
        detox={"assignment": "mols", "buckets": 5},
        nodes=one_server(15, 2),
        attack={"name": "signflip"},
        aggregator={"name": "median"},
    )
    assert PROTOCOLS["detox"].describe(detox) == {
        "assignment": "mols(l=5, r=3)",
        "files": 25,
        "load": 5,
        "c_max": 1,
        "buckets": 5,
        "eigenvalue_bound": 2.105,  # ByzShield's (q l - beta) / (t - 1) = 40/19 for q=2, to 3 decimals
        "distorted_files": 1,
    }


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_an_undecodable_round_says_why(name):
    # More corrupted messages than the code corrects: the scheme's "not yet" carries the decoder's reason.
    config = make_config(**SETTINGS[name])
    scheme = PROTOCOLS[config.protocol].make_scheme(config, Workload(config).dimension)
    rng = np.random.default_rng(5)
    received = {i: garbage(p, rng) for i, p in honest_payloads(config).items()}
    with pytest.raises(NotDecodable) as not_yet:
        scheme.aggregate(received, complete=True)
    wire = {i: scheme.code.from_wire(p) for i, p in received.items()} if name == "draco-cyclic" else received
    with pytest.raises(DecodingError) as reason:
        scheme.code.decode(wire, mean=True)
    assert str(not_yet.value) == str(reason.value) != ""


def started_draco_server():
    """A started DRACO repetition server of one group of 3 workers (f_w = 1), and its dimension."""
    config = make_config(protocol="draco", nodes=one_server(3, 1))
    server = PROTOCOLS["draco"].make_node(config, "ps0", Workload(config))
    server.start()
    return server, server.vector.numel()


def test_a_round_no_one_can_decode_stops_the_server_with_the_reason():
    server, d = started_draco_server()  # one group of 3: 2 equal copies needed
    server.on_message(Message("w0", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    server.on_message(Message("w1", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 0  # 2 = n_w - f_w messages, but they disagree: wait for the third
    reason = "file 0's most common copy has 1 votes, fewer than the 2 needed"
    with pytest.raises(RuntimeError, match=f"ps0 step 0: every worker was heard from, but .*{reason}"):
        server.on_message(Message("w2", "ps0", "gradient", 0, np.full(d, 2.0, np.float32)))


def test_one_message_can_finish_a_round_and_leave_the_next_one_waiting():
    server, d = started_draco_server()
    # Round 1 arrives early and disagrees; round 0's second equal copy then decodes round 0.
    server.on_message(Message("w0", "ps0", "gradient", 1, np.zeros(d, np.float32)))
    server.on_message(Message("w1", "ps0", "gradient", 1, np.ones(d, np.float32)))
    server.on_message(Message("w0", "ps0", "gradient", 0, np.ones(d, np.float32)))
    out = server.on_message(Message("w1", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 1
    assert [(m.receiver, m.kind, m.round) for m in out] == [(f"w{i}", "model", 1) for i in range(3)]
    out = server.on_message(Message("w2", "ps0", "gradient", 1, np.ones(d, np.float32)))  # w1's copy wins
    assert server.step == 2 and [m.round for m in out] == [2, 2, 2]


def test_one_message_can_finish_two_rounds():
    server, d = started_draco_server()
    for k in (0, 1):  # round 1 is decodable before round 0 is
        server.on_message(Message(f"w{k}", "ps0", "gradient", 1, np.ones(d, np.float32)))
    server.on_message(Message("w0", "ps0", "gradient", 0, np.ones(d, np.float32)))
    out = server.on_message(Message("w1", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 2
    assert [(m.receiver, m.round) for m in out] == [(f"w{i}", r) for r in (1, 2) for i in range(3)]


def test_a_coded_server_buffers_only_window_rounds_ahead():
    config = make_config(protocol="draco", nodes=one_server(3, 1), draco={"window": 2})
    server = PROTOCOLS["draco"].make_node(config, "ps0", Workload(config))
    d = server.vector.numel()
    server.on_message(Message("w0", "ps0", "gradient", 2, np.ones(d, np.float32)))
    assert server.rejected["future"] == 0
    server.on_message(Message("w0", "ps0", "gradient", 3, np.ones(d, np.float32)))
    assert server.rejected["future"] == 1
    worker = PROTOCOLS["draco"].make_node(config, "w0", Workload(config))
    assert math.isnan(worker.last_loss)  # no loss before its first gradient
    model = server.vector.numpy()
    assert worker.on_message(Message("ps0", "w0", "model", 2, model)) == []
    assert worker.on_message(Message("ps0", "w0", "model", 3, model)) == [] and worker.rejected == {"future": 1}
    for window in (0, -1):
        with pytest.raises(ConfigError, match=f"draco.window={window}: must be at least 1"):
            make_config(protocol="draco", nodes=one_server(3, 1), draco={"window": window})
    assert make_config(protocol="draco", nodes=one_server(3, 1), draco={"window": 1}).options.window == 1


def test_a_rejected_last_message_completes_the_round():
    # File 0's holders w0, w1, w2: w1 and w2 disagree with w0, so no strict majority; w2's message,
    # the last one, is malformed, yet every worker has now been heard: the plurality decides.
    config = make_config(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "median"})
    server = PROTOCOLS["detox"].make_node(config, "ps0", Workload(config))
    server.start()
    payloads = honest_payloads(config)
    rng = np.random.default_rng(0)
    for i in [0, 1, *range(3, 9)]:
        server.on_message(Message(f"w{i}", "ps0", "gradient", 0, garbage(payloads[i], rng) if i == 1 else payloads[i]))
    assert server.step == 0
    server.on_message(Message("w2", "ps0", "gradient", 0, payloads[2][:-1]))  # wrong length: rejected
    assert server.rejected["malformed"] == 1 and server.step == 1
    votes = np.stack([payloads[0], payloads[3], payloads[6]])  # a tie on file 0 goes to w0's honest copy
    np.testing.assert_allclose(server.last_aggregate, np.median(votes, axis=0), rtol=1e-6)


def test_solon_steps_on_a_quorum_in_every_round():
    # Solon retries a failed decode only once everyone was heard from: that must not hold back a
    # round that never failed (each round here decodes from its first n_w - f_w messages).
    config = make_config(**SETTINGS["solon"])
    protocol, workload = PROTOCOLS["solon"], Workload(config)
    server = protocol.make_node(config, "ps0", workload)
    workers = [protocol.make_node(config, f"w{i}", workload) for i in range(8)]
    models = server.start()
    for step in range(3):
        for i in range(7):
            (gradient,) = workers[i].on_message(models[i])
            models = server.on_message(gradient) or models
        assert server.step == step + 1


def file_votes(atol=0.0):
    """ByzShield's MOLS assignment (15 workers, 25 files, 5 per worker), the rule returning the votes as they are."""
    return FileVoteScheme(build_assignment("mols", 15, 3), dimension=2, rule=lambda votes: votes, atol=atol)


def copy_of(file, noise=0.0):
    return np.array([file, -file], np.float32) + np.float32(noise)


def test_with_everyone_heard_a_file_nobody_sent_becomes_a_nan_vote_and_the_others_their_plurality():
    scheme = file_votes()
    assignment = scheme.assignment
    silent = set(assignment.workers_of(0))  # file 0's holders never spoke (they crashed)
    liar = max(set(range(15)) - silent)  # its copies tie with a single honest one: ties go to lower indices
    received = {
        k: np.concatenate([copy_of(f, 100.0 if k == liar else 0.0) for f in assignment.files_of(k)])
        for k in range(15)
        if k not in silent
    }
    votes = scheme.aggregate(received, complete=True)
    assert votes.shape == (25, 2) and votes.dtype == np.float32 and np.isnan(votes[0]).all()
    for file in range(1, 25):
        np.testing.assert_array_equal(votes[file], copy_of(file))
    with pytest.raises(NotDecodable, match="file 0 received no copy"):
        scheme.aggregate(received, complete=False)


@pytest.mark.parametrize("complete", [False, True])
def test_file_votes_count_copies_within_atol_as_equal(complete):
    # Each file: its lowest holder lies, the two others send the honest value with different
    # rounding noise. Bitwise, three different copies tie and the liar (first) wins; within atol
    # the two honest copies are a strict majority.
    scheme = file_votes(atol=1e-3)
    assignment = scheme.assignment
    silent = set(assignment.workers_of(0)) if complete else set()  # complete with a gap: the plurality with gaps
    received = {}
    for k in set(range(15)) - silent:
        rows = []
        for f in assignment.files_of(k):
            rank = assignment.workers_of(f).index(k)
            rows.append(copy_of(f, 100.0) if rank == 0 else copy_of(f, 1e-4 * rank))
        received[k] = np.concatenate(rows)
    votes = scheme.aggregate(received, complete=complete)
    whole = [f for f in range(25) if silent.isdisjoint(assignment.workers_of(f))]
    assert len(whole) >= 10
    for file in whole:
        assert np.max(np.abs(votes[file] - copy_of(file))) <= 1e-3


def test_detox_derive_hands_its_worst_case_searches_to_restore():
    # The driver searches once (c_max for f_w and for the attack's count); node builders adopt it.
    config = make_config(
        protocol="detox", nodes=one_server(9, 2), attack={"name": "signflip", "count": 1}, aggregator={"name": "median"}
    )
    saved = dict(SEARCHED)
    try:
        SEARCHED.clear()  # search afresh, as a new driver process would
        derived = PROTOCOLS["detox"].derive(config)
        # groups of 3: one Byzantine worker distorts no file, two in one group distort that group's file
        expected = {("detox", 9, 3, None, 1): (0, (0,)), ("detox", 9, 3, None, 2): (1, (0, 1))}
        assert derived == {"distortable": expected} and SEARCHED == expected
        # Ramanujan case 2 with m = 2s files per worker: each worker set distorts twice the files of m = s
        assert distortable("ramanujan", 9, 3, 6, 2) == (2, (0, 3))
        assert distortable("ramanujan", 9, 3, None, 2) == (1, (0, 3))
        SEARCHED.clear()
        PROTOCOLS["detox"].restore({})  # nothing derived (another protocol's plan): nothing adopted
        assert SEARCHED == {}
        PROTOCOLS["detox"].restore(derived)
        assert SEARCHED == expected
    finally:
        SEARCHED.clear()
        SEARCHED.update(saved)


def drive(config, byzantine=(), forge=garbage):
    """Run a coded protocol's server and workers in FIFO order until the server is done;
    ``byzantine`` workers' gradients are replaced by ``forge``. Returns (server, workers)."""
    protocol, workload = PROTOCOLS[config.protocol], Workload(config)
    server = protocol.make_node(config, "ps0", workload)
    workers = {f"w{i}": protocol.make_node(config, f"w{i}", workload) for i in range(config.nodes.n_w)}
    rng = np.random.default_rng(3)
    queue = server.start()
    while queue and not server.done:
        message = queue.pop(0)
        if message.receiver == "ps0":
            if int(message.sender[1:]) in byzantine:
                message = Message(message.sender, "ps0", message.kind, message.round, forge(message.payload, rng))
            queue += server.on_message(message)
        else:
            queue += workers[message.receiver].on_message(message)
    return server, workers


def plain_sgd(config, partitions, steps, combine=lambda grads: grads.mean(0)):
    """The model after ``steps`` SGD steps on the mean of every partition's gradient, each partition
    drawing its own seeded batches: what an exact decoder must reproduce whatever the adversaries send."""
    workload = Workload(config)
    shards = partition(workload.data.y_train, partitions, config.data.partition, config.data.alpha, config.seed)
    samplers = [BatchSampler(s, config.data.batch_size, config.seed * 1_000_003 + p) for p, s in enumerate(shards)]
    x = workload.initial_vector()
    losses = []
    for _ in range(steps):
        results = [workload.gradient(x, sampler.next()) for sampler in samplers]
        losses.append([loss for _, loss in results])
        x = x - config.optimizer.lr * combine(torch.stack([g for g, _ in results]))
    return x, losses


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_exact_codes_step_as_plain_sgd_on_the_honest_mean_for_several_steps(name):
    # seed 1 and a Dirichlet split: partitions and batches follow the run's seed and data settings
    data = {"dataset": "synthetic", "batch_size": 16, "partition": "dirichlet", "alpha": 0.3}
    config = make_config(steps=3, eval_every=2, seed=1, data=data, **SETTINGS[name])
    server, workers = drive(config, byzantine=set(range(1, 1 + config.nodes.f_w)))
    assert server.step == 3 and [step for step, _ in server.drain_reports()] == [0, 2, 3]  # every 2, and the last
    expected, losses = plain_sgd(config, server.scheme.num_partitions, 3)
    assert server.vector.dtype == torch.float32  # the model stays float32 whatever the decoder's precision
    np.testing.assert_allclose(server.vector.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    worker = workers["w0"]  # its loss is the mean over its partitions' losses at the last step
    assert worker.step == 3
    assert worker.last_loss == pytest.approx(np.mean([losses[-1][p] for p in worker.partitions]), rel=1e-5)


def test_detox_steps_with_the_rule_over_honest_file_votes_for_several_steps():
    # groups of 3, one Byzantine worker (c_max = 0): every file vote is honest, the median is over them
    config = make_config(steps=3, eval_every=1, protocol="detox", nodes=one_server(9, 1), aggregator={"name": "median"})
    server, _ = drive(config, byzantine={4})
    assert server.step == 3
    expected, _ = plain_sgd(config, 3, 3, combine=lambda grads: grads.median(0).values)
    np.testing.assert_allclose(server.vector.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_only_a_workers_gradient_counts_as_heard():
    server, d = started_draco_server()
    server.on_message(Message("w0", "ps0", "gradient", 0, np.zeros(d, np.float32)))
    server.on_message(Message("w1", "ps0", "gradient", 0, np.ones(d, np.float32)))
    # An outsider's gradient and w2's message of another kind do not end the round (both rejected).
    assert server.on_message(Message("w9", "ps0", "gradient", 0, np.ones(d, np.float32))) == []
    assert server.on_message(Message("w2", "ps0", "model", 0, np.ones(d, np.float32))) == []
    assert server.step == 0 and server.heard == {0: {"w0", "w1"}}
    server.on_message(Message("w2", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 1


def test_a_malformed_message_for_the_last_round_in_the_window_counts_as_heard():
    # detox, one file held by all 3 workers; window 1. w2's malformed round-1 message comes while the
    # server is at round 0: when round 1 is undecided, it still counts, so everyone was heard.
    config = make_config(protocol="detox", nodes=one_server(3, 1), aggregator={"name": "median"}, detox={"window": 1})
    server = PROTOCOLS["detox"].make_node(config, "ps0", Workload(config))
    server.start()
    d = server.vector.numel()
    server.on_message(Message("w2", "ps0", "gradient", 1, np.ones(d + 1, np.float32)))
    assert server.rejected["malformed"] == 1
    for k in (0, 1):
        server.on_message(Message(f"w{k}", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 1
    server.on_message(Message("w0", "ps0", "gradient", 1, np.zeros(d, np.float32)))
    server.on_message(Message("w1", "ps0", "gradient", 1, np.ones(d, np.float32)))
    assert server.step == 2 and np.array_equal(server.last_aggregate, np.zeros(d))  # the tie goes to w0


def test_vote_schemes_retry_on_each_arrival():
    # DRACO, s = 2, groups of 5. Quorum 8: group 0 has w0, w1 and w2 (Byzantine) only, 2 < s + 1
    # honest copies; w3's arrival gives the third, and the server decodes without waiting for w4.
    config = make_config(protocol="draco", nodes=one_server(10, 2))
    server = PROTOCOLS["draco"].make_node(config, "ps0", Workload(config))
    server.start()
    payloads = honest_payloads(config)
    for k in [0, 1, 2, *range(5, 10)]:
        payload = garbage(payloads[k], np.random.default_rng(k)) if k == 2 else payloads[k]
        assert server.on_message(Message(f"w{k}", "ps0", "gradient", 0, payload)) == []
    assert server.step == 0
    server.on_message(Message("w3", "ps0", "gradient", 0, payloads[3]))
    assert server.step == 1


def test_solon_after_a_failed_decode_waits_for_every_worker():
    # Solon, s = 2, groups of 6 (r = 2s + r_c). Quorum 10: group 0 has 5 messages, 2 forged: with one
    # missing that is too many errors. Its 6th message would make it decodable, but syndrome decoding
    # retries only once everyone was heard from (a failure costs far more than a success).
    config = make_config(protocol="solon", solon={"compression": 2}, nodes=one_server(12, 2))
    server = PROTOCOLS["solon"].make_node(config, "ps0", Workload(config))
    server.start()
    payloads = honest_payloads(config)
    rng = np.random.default_rng(1)
    for k in [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]:
        payload = garbage(payloads[k], rng) if k in (1, 3) else payloads[k]
        assert server.on_message(Message(f"w{k}", "ps0", "gradient", 0, payload)) == []
    assert server.step == 0 and server.failed_round == 0
    assert server.on_message(Message("w5", "ps0", "gradient", 0, payloads[5])) == []
    assert server.step == 0
    out = server.on_message(Message("w11", "ps0", "gradient", 0, payloads[11]))
    assert server.step == 1 and len(out) == 12


@pytest.mark.parametrize(
    ("n_w", "r", "arrivals", "decided"),
    [
        (9, 3, [0, 1, 3, 4, 5, 6, 7, 8], True),  # 2 of file 0's 3 equal copies: a strict majority
        (10, 5, [0, 1, 2, 3, 5, 6, 7, 8, 9], False),  # 2 of 5 honest (w2, w3 forged): no strict majority yet
    ],
)
def test_detox_decides_a_file_on_a_strict_majority_of_its_holders(n_w, r, arrivals, decided):
    config = make_config(
        protocol="detox",
        nodes=one_server(n_w, 1 if r == 3 else 2),
        detox={"replication": r},
        aggregator={"name": "median"},
    )
    server = PROTOCOLS["detox"].make_node(config, "ps0", Workload(config))
    server.start()
    payloads = honest_payloads(config)
    for k in arrivals:
        payload = garbage(payloads[k], np.random.default_rng(k)) if r == 5 and k in (2, 3) else payloads[k]
        server.on_message(Message(f"w{k}", "ps0", "gradient", 0, payload))
    assert server.step == int(decided)


def test_detox_settings_checks():
    sections = dict(protocol="detox", nodes=one_server(9, 1), aggregator={"name": "median"})
    assert make_config(detox={"buckets": 1}, **sections).options.buckets == 1  # one bucket: the mean of all votes
    assert make_config(detox={"buckets": 3}, **sections).options.buckets == 3  # one vote per bucket
    with pytest.raises(ConfigError, match=r"detox.atol=-1.0: must be >= 0"):
        make_config(detox={"atol": -1.0}, **sections)
    with pytest.raises(ConfigError, match="c_max=1 distorted files among 3 files, which needs 5"):
        make_config(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "multikrum"})
    # a wrapper rule's params reach both the check and the rule
    ctma = {"name": "ctma", "params": {"base": "median"}}
    wrapped = make_config(protocol="detox", nodes=one_server(9, 2), aggregator=ctma)
    scheme = PROTOCOLS["detox"].make_scheme(wrapped, 2)
    assert scheme.rule.base.name == "median"


def test_a_coded_worker_answers_each_model_once_even_out_of_order():
    config = make_config(**SETTINGS["draco-repetition"])
    protocol, workload = PROTOCOLS["draco"], Workload(config)
    worker = protocol.make_node(config, "w0", workload)
    model = workload.initial_vector().numpy()
    assert worker.on_message(Message("ps0", "w0", "model", 1, model)) == []  # early: kept
    out = worker.on_message(Message("ps0", "w0", "model", 0, model))
    assert [(m.sender, m.receiver, m.kind, m.round) for m in out] == [("w0", "ps0", "gradient", r) for r in (0, 1)]
    assert worker.on_message(Message("ps0", "w0", "model", 1, model)) == []  # a replay is stale
    assert worker.rejected == {"stale": 1} and worker.step == 2


def test_a_coded_server_keeps_a_float32_model_and_drops_late_gradients():
    server, d = started_draco_server()
    for k in (0, 1):
        server.on_message(Message(f"w{k}", "ps0", "gradient", 0, np.ones(d, np.float32)))
    assert server.step == 1 and server.vector.dtype == torch.float32  # the decoded mean is float64
    assert server.on_message(Message("w2", "ps0", "gradient", 0, np.ones(d, np.float32))) == []
    assert server.rejected == {"stale": 1}


def test_coded_schemes_cover_every_worker():
    for settings in SETTINGS.values():
        config = make_config(**settings)
        assert PROTOCOLS[config.protocol].make_scheme(config, 4).num_workers == config.nodes.n_w
    config = make_config(protocol="detox", nodes=one_server(9, 1), aggregator={"name": "median"})
    assert PROTOCOLS["detox"].make_scheme(config, 4).num_workers == 9


def test_detox_c_max_uses_the_configured_ramanujan_load():
    sections = dict(protocol="detox", nodes=one_server(9, 2), aggregator={"name": "median"})
    ramanujan = {"assignment": "ramanujan", "replication": 3}
    assert PROTOCOLS["detox"].robust_f(make_config(detox={**ramanujan, "load": 6}, **sections)) == 2
    assert PROTOCOLS["detox"].robust_f(make_config(detox=ramanujan, **sections)) == 1


def test_detox_bucket_shuffle_follows_the_run_seed():
    config = make_config(
        seed=1, protocol="detox", nodes=one_server(15, 1), aggregator={"name": "median"}, detox={"buckets": 2}
    )
    scheme = PROTOCOLS["detox"].make_scheme(config, 2)
    assert np.array_equal(scheme.shuffle.permutation(5), np.random.default_rng([1, 2019]).permutation(5))
