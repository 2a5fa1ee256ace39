"""Asynchrony when nodes share a Ray actor (``ray.actors``).

Co-hosted nodes used to see every message in the same order, so correct servers ran identical
quorums and their models never differed (diameter exactly 0). The bus now gives every message its
own seeded network delay, and an actor's Mailbox hands messages out in the order of those delays.
"""

import numpy as np
import pytest

from byzsgd.bus import Bus, Mailbox
from byzsgd.experiment import assemble
from byzsgd.faults import FaultInjector
from byzsgd.messages import Message, broadcast
from byzsgd.nodes import server_ids, worker_ids
from byzsgd.runner import run_experiment
from tests.conftest import make_config


def bus(config, seed=0):
    experiment = assemble(config)
    return Bus(
        FaultInjector(experiment),
        config.network,
        experiment.node_ids,
        delay_rng=np.random.default_rng([seed, 1]),
        reorder_rng=np.random.default_rng([seed, 2]),
    )


def test_every_link_gets_its_own_seeded_delay_within_the_jitter():
    config = make_config(network={"delay": 2.0, "jitter": 0.5})
    servers = server_ids(5)
    message = broadcast("w0", servers, "gradient", 0, np.zeros(3, np.float32))
    planned = bus(config).send("w0", message)
    delays = [delay for _, delay, _ in planned]
    assert [m.receiver for m, _, _ in planned] == servers
    assert all(1.0 <= d <= 3.0 for d in delays) and len(set(delays)) == len(delays)
    assert delays == [delay for _, delay, _ in bus(config).send("w0", message)]  # same seed, same delays
    assert delays != [delay for _, delay, _ in bus(config, seed=1).send("w0", message)]
    still = make_config(network={"delay": 2.0, "jitter": 0.0})
    assert [delay for _, delay, _ in bus(still).send("w0", message)] == [2.0] * 5


def test_the_mailbox_hands_out_messages_in_due_order_and_its_clock_follows():
    box = Mailbox()
    late, soon, tie = (Message(s, "ps0", "gradient", 0, np.zeros(1)) for s in ("w0", "w1", "w2"))
    box.put(late, 1.5)
    box.put(soon, 0.5)
    box.put(tie, 1.5)
    assert box.pop() is soon and box.clock == 0.5
    assert box.pop() is late and box.pop() is tie and box.clock == 1.5  # ties in arrival order
    box.put(soon, -1.0)  # overdue (a message from another actor that left long ago): next, clock kept
    assert box.pop() is soon and box.clock == 1.5 and len(box) == 0


def test_a_lead_carries_the_senders_relative_timing_to_another_actor():
    sender, receiver = Mailbox(), Mailbox()
    sender.clock, receiver.clock = 100.0, 3.0  # actors' clocks are unrelated
    first, second = (Message(s, "ps0", "gradient", 0, np.zeros(1)) for s in ("w0", "w1"))
    outbox = [(first, sender.due(1.0))]  # sent at 100.0, due at 101.0
    sender.put(Message("ps0", "w1", "model", 0, np.zeros(1)), 0.8)
    sender.pop()  # the sender's clock moves on to 100.8 ...
    outbox.append((second, sender.due(0.1)))  # ... and its next message, sent then, is due at 100.9
    leads = [(message, sender.lead(due)) for message, due in outbox]  # at the flush, clock 100.8
    assert [lead for _, lead in leads] == [pytest.approx(0.2), pytest.approx(0.1)]
    own = Message("ps1", "ps0", "gather", 0, np.zeros(1))
    receiver.put(own, 0.15)
    for message, lead in leads:
        receiver.put(message, lead)
    assert [receiver.pop().sender for _ in range(3)] == ["w1", "ps1", "w0"]


def test_co_hosted_servers_take_quorums_of_different_workers():
    """One batch of every worker's gradient reaches an actor hosting all five servers: each
    server's first n_w - f_w gradients (its quorum) differ from server to server."""
    config = make_config()  # 5 servers, 7 workers, f_w = 2: quorums of 5
    wire, box = bus(config), Mailbox()
    workers, servers = worker_ids(7), server_ids(5)
    for worker in workers:
        for message, delay, _ in wire.send(worker, broadcast(worker, servers, "gradient", 0, np.zeros(3))):
            box.put(message, delay)
    arrivals: dict[str, list[str]] = {server: [] for server in servers}
    while box:
        message = box.pop()
        arrivals[message.receiver].append(message.sender)
    assert all(sorted(order) == workers for order in arrivals.values())
    quorums = {frozenset(order[:5]) for order in arrivals.values()}
    assert len(quorums) > 1  # first in, first out would give every server the same five workers


@pytest.mark.slow
def test_servers_sharing_an_actor_drift_apart_between_gathers(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray",
        steps=20,
        eval_every=10,
        data={"dataset": "digits", "batch_size": 32},
        model={"name": "mlp", "hidden": 64},  # the demo's workload
        optimizer={"lr": 0.1},
        ray={"actors": 3},  # all five servers in one actor, the workers in two
    )
    rows = run_experiment(config, tmp_path / "run").rows
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[0]["diameter"] == 0  # every server starts from the same model
    # Steps 10 and 20 are not gather steps (T = 3): the servers' models differ, as over a network.
    assert all(r["diameter"] > 0 for r in rows[1:]), [r["diameter"] for r in rows]
    assert rows[-1]["test_acc"] > 0.2  # still learning (10 classes: chance is 0.1; the demo has ~0.45 here)
