"""The message bus under abuse: malformed payloads, floods of future rounds and of kinds,
duplicates and spoofing are rejected and counted, memory stays bounded, training continues."""

from dataclasses import replace

import numpy as np
import pytest

from byzsgd.experiment import assemble
from byzsgd.faults import FaultInjector
from byzsgd.messages import Channel, Inbox, Message
from byzsgd.runner import run_experiment
from byzsgd.runtime import local
from tests.conftest import make_config

SENDERS = ("w0", "w1", "w2")


def inbox(window=3):
    return Inbox(
        {"gradient": Channel(frozenset(SENDERS), 4), "gather": Channel(frozenset({"ps1"}), 4)},
        window=window,
    )


def held(box):
    return {kind: sum(len(v) for v in rounds.values()) for kind, rounds in box.buffers.items()}


def test_a_flood_of_future_rounds_on_every_channel_holds_at_most_the_window():
    box = inbox(window=3)
    payload = np.ones(4, np.float32)
    for round_ in range(2000):
        for sender in SENDERS:
            box.add(Message(sender, "ps0", "gradient", round_, payload))
        box.add(Message("ps1", "ps0", "gather", round_, payload))
    assert held(box) == {"gradient": 3 * 4, "gather": 4}  # senders x (window + 1) rounds
    assert box.rejected["future"] == (3 + 1) * (2000 - 4)
    box.advance("gradient", 10)  # consumed rounds free their memory, later ones fill the window
    assert held(box)["gradient"] == 0
    box.add(Message("w0", "ps0", "gradient", 13, payload))
    assert held(box)["gradient"] == 1


def test_a_flood_of_kinds_senders_and_oversized_payloads_stores_nothing():
    box = inbox()
    for i in range(5000):
        box.add(Message("w0", "ps0", f"kind{i}", 0, np.ones(4, np.float32)))
        box.add(Message(f"intruder{i}", "ps0", "gradient", 0, np.ones(4, np.float32)))
    box.add(Message("w1", "ps0", "gradient", 0, np.ones(10**6, np.float32)))
    for bad_round in (-1, 1.0, "0", None):
        box.add(Message("w2", "ps0", "gradient", bad_round, np.ones(4, np.float32)))
    assert set(box.buffers) == {"gradient", "gather"} and held(box) == {"gradient": 0, "gather": 0}
    assert box.rejected == {"unknown_kind": 5000, "unexpected_sender": 5000, "malformed": 4, "stale": 1}


def test_duplicates_from_one_sender_count_once_in_a_quorum():
    box = inbox()
    for value in (1.0, 2.0, 3.0):
        box.add(Message("w0", "ps0", "gradient", 0, np.full(4, value, np.float32)))
    assert box.quorum("gradient", 0, 2) is None  # one sender, however many messages
    box.add(Message("w1", "ps0", "gradient", 0, np.zeros(4, np.float32)))
    first, second = box.quorum("gradient", 0, 2)
    assert first[0] == 1.0 and second[0] == 0.0 and box.rejected["duplicate"] == 2


class FloodingInjector(FaultInjector):
    """Every Byzantine send also carries junk: what a malicious node could put on the wire."""

    def corrupt(self, messages):
        out = super().corrupt(messages)
        junk = []
        for message in messages:
            size = message.payload.size
            junk += [
                replace(message, round=message.round + 10**6),
                *[replace(message, round=message.round + r) for r in range(2, 40)],  # within-window rounds
                replace(message, kind="evil"),
                replace(message, kind="gather"),  # a worker posing as a server
                replace(message, payload=np.ones(size + 1, np.float32)),
                replace(message, payload=np.ones(size, np.float64)),
                replace(message, payload="not a vector"),
                replace(message, payload=np.full(size, np.nan, np.float32)),
                replace(message, round=-5),
                replace(message, sender="ps0"),  # spoofed: the bus restamps it with the real sender
            ]
        return out + [(m, 0.0) for m in junk]


def test_a_flooding_byzantine_worker_is_rejected_and_counted_while_training_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "FaultInjector", FloodingInjector)
    config = make_config(steps=30, eval_every=10, attack={"name": "signflip"}, output_dir=str(tmp_path))
    rows = run_experiment(config).rows
    final = rows[-1]
    assert final["step"] == 30 and final["test_acc"] > 0.8
    for reason in ("future", "unknown_kind", "unexpected_sender", "malformed", "non_finite", "stale", "duplicate"):
        assert final[f"rejected_{reason}"] > 0, reason
    assert final["rejected"] == sum(v for k, v in final.items() if k.startswith("rejected_"))


def test_the_bus_stamps_the_real_sender_on_a_spoofed_message(monkeypatch):
    class Spoofing(FaultInjector):
        def corrupt(self, messages):
            return [(replace(m, sender="w0"), 0.0) for m in messages]

    config = make_config(attack={"name": "signflip", "ids": [6]})
    network = local.Network({}, Spoofing(config), assemble(config), monitor=None)
    payload = np.zeros(3, np.float32)
    network.send("w6", [Message("w6", "ps0", "gradient", 0, payload)])
    assert [m.sender for _, _, m in network.queue] == ["w6"]


@pytest.mark.parametrize("reorder", [0.0, 0.5])
def test_training_survives_reordering(tmp_path, reorder):
    config = make_config(steps=30, eval_every=10, network={"reorder": reorder}, output_dir=str(tmp_path))
    assert run_experiment(config).rows[-1]["test_acc"] > 0.8
