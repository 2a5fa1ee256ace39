import warnings

import numpy as np

from byzsgd.messages import PAYLOAD_DTYPE, TIMER, Channel, Inbox, Message, broadcast, is_timer, timer, timer_delay


def inbox(window=3):
    return Inbox({"gradient": Channel(frozenset({"w0", "w1", "w2"}), 4)}, window=window)


def msg(sender="w0", round_=0, payload=None, kind="gradient"):
    return Message(sender, "ps0", kind, round_, np.ones(4, np.float32) if payload is None else payload)


def test_rejections_are_counted_by_reason():
    box = inbox()
    assert box.add(msg())
    bad = [
        (msg("w9"), "unexpected_sender"),
        (msg(kind="other"), "unknown_kind"),
        (msg(payload=np.ones(5, np.float32)), "malformed"),
        (msg(payload=np.ones(4, np.float64)), "malformed"),
        (msg(payload=np.ones((2, 2), np.float32)), "malformed"),
        (msg("w1", payload=np.array([1, np.nan, 0, 0], np.float32)), "non_finite"),
        (msg("w1", payload=np.array([1, np.inf, 0, 0], np.float32)), "non_finite"),
        (msg(), "duplicate"),
        (msg("w1", round_=4), "future"),
    ]
    for message, reason in bad:
        assert not box.add(message), reason
    assert box.rejected == {r: sum(1 for _, x in bad if x == r) for _, r in bad}
    box.advance("gradient", 1)
    assert not box.add(msg("w2", round_=0)) and box.rejected["stale"] == 1


def test_quorum_is_the_first_arrivals_and_waits_for_enough():
    box = inbox()
    box.add(msg("w2", payload=np.full(4, 2, np.float32)))
    assert box.quorum("gradient", 0, 2) is None
    box.add(msg("w0", payload=np.full(4, 0, np.float32)))
    box.add(msg("w1", payload=np.full(4, 1, np.float32)))
    first_two = box.quorum("gradient", 0, 2)
    assert [p[0] for p in first_two] == [2, 0]


def test_flooding_keeps_memory_bounded():
    box = inbox(window=3)
    for round_ in range(1000):
        for sender in ("w0", "w1", "w2"):
            for _ in range(5):
                box.add(msg(sender, round_))
    held = sum(len(v) for v in box.buffers["gradient"].values())
    assert held == 3 * 4  # 3 senders x rounds 0..3
    assert box.rejected["future"] == 3 * 5 * (1000 - 4)
    assert box.rejected["duplicate"] == 3 * 4 * 4


def test_ill_typed_headers_and_payload_subclasses_are_malformed_not_a_crash():
    box = inbox()
    hidden_nan = np.ma.masked_array(np.array([1, np.nan, 0, 0], np.float32), mask=[0, 1, 0, 0])
    assert np.isfinite(hidden_nan).all()  # the mask hides the NaN from the finite check
    bad = [
        msg(sender=["w0"]),  # unhashable: a set lookup would raise TypeError
        msg(kind={"gradient": 1}),
        msg(sender=b"w0"),
        msg(round_=1.0),  # a non-integer round is malformed, not stale
        msg(round_="0"),
        msg(round_=None),
        msg(round_=True),
        msg(round_=[0]),
        msg(payload=hidden_nan),
        msg(payload=np.ones(4, np.float32).view(np.recarray)),
        msg(payload=np.ones(4, np.dtype(">f4"))),  # right kind, foreign byte order
        msg(payload=[1.0, 1.0, 1.0, 1.0]),
        ("w0", "ps0", "gradient", 0, np.ones(4, np.float32)),  # not a Message at all
    ]
    for message in bad:
        assert not box.add(message), message
    assert box.rejected == {"malformed": len(bad)} and box.accepted == 0
    assert box.add(msg(round_=np.int64(0)))  # numpy integers are integers


def test_broadcast_sends_one_shared_payload_to_each_receiver():
    payload = np.arange(4, dtype=np.float32)
    sent = broadcast("ps1", ["w0", "w1", "w2"], "model", 7, payload)
    assert [(m.sender, m.receiver, m.kind, m.round) for m in sent] == [
        ("ps1", r, "model", 7) for r in ("w0", "w1", "w2")
    ]
    assert all(m.payload is payload for m in sent)  # runtimes ship one object, not copies


def test_a_timer_comes_back_to_its_node_with_its_delay_and_tag():
    alarm = timer("ps0", 3, 2.5, tag=4)
    assert (alarm.sender, alarm.receiver, alarm.kind, alarm.round) == ("ps0", "ps0", TIMER, 3)
    assert alarm.payload.dtype == PAYLOAD_DTYPE == np.float32
    np.testing.assert_array_equal(alarm.payload, [2.5, 4])
    assert is_timer(alarm) and timer_delay(alarm) == 2.5
    assert timer("ps0", 0, 1.0).payload[1] == 0  # the default tag
    assert timer_delay(timer("ps0", 0, -3.0)) == 0.0  # a negative delay fires at once
    # Another node cannot forge one (the runtime stamps senders), nor is another kind a timer.
    assert not is_timer(Message("w0", "ps0", TIMER, 3, alarm.payload))
    assert not is_timer(Message("ps0", "ps0", "model", 3, alarm.payload))


def test_channels_default_to_float32_and_take_other_dtypes():
    assert Channel(frozenset({"w0"}), 2).dtype == np.dtype(np.float32)
    box = Inbox({"coded": Channel(frozenset({"w0"}), 2, np.dtype(np.float64))})
    assert not box.add(Message("w0", "ps0", "coded", 0, np.ones(2, np.float32)))
    assert box.add(Message("w0", "ps0", "coded", 0, np.ones(2, np.float64)))


def test_the_window_edge_and_advance():
    box = inbox(window=3)
    assert box.add(msg("w0", round_=3))  # next_round + window is still accepted
    assert not box.add(msg("w1", round_=4)) and box.rejected["future"] == 1
    assert box.senders("gradient", 3) == ["w0"] and box.senders("gradient", 2) == []
    assert box.add(msg("w1", round_=1)) and box.add(msg("w2", round_=2))
    box.advance("gradient", 2)  # drops round 1, keeps 2 and 3
    assert box.next_round["gradient"] == 2
    assert sorted(box.buffers["gradient"]) == [2, 3]
    assert box.quorum("gradient", 1, 1) is None and box.quorum("gradient", 2, 1) is not None
    box.advance("gradient", 1)  # never backwards
    assert box.next_round["gradient"] == 2
    assert box.add(msg("w0", round_=5))  # the window moved with next_round
    assert box.accepted == 4


def test_a_quorum_of_exactly_the_arrivals_is_released():
    box = inbox()
    for sender in ("w0", "w1"):
        box.add(msg(sender))
    assert len(box.quorum("gradient", 0, 2)) == 2
    assert box.quorum("gradient", 0, 3) is None
    assert box.quorum("gradient", 5, 0) is None  # nothing arrived for that round


def test_the_default_window_is_64_rounds():
    box = Inbox({"gradient": Channel(frozenset({"w0"}), 4)})
    assert box.add(msg("w0", round_=64))
    assert not box.add(msg("w0", round_=65)) and box.rejected == {"future": 1}


def test_finite_check_accepts_huge_finite_values_and_rejects_any_nan_or_inf():
    # The fast check (a finite dot product) cannot vouch for values whose squares overflow; the
    # exact check then decides: huge finite values pass, a single NaN or inf anywhere does not.
    box = Inbox({"gradient": Channel(frozenset({"w0", "w1", "w2", "w3"}), 1000)})
    huge = np.full(1000, 3e38, np.float32)  # every square overflows float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Byzantine payload must not make the check warn either
        assert box.add(Message("w0", "ps0", "gradient", 0, huge))
        for sender, position, value in [("w1", 999, np.nan), ("w2", 0, np.inf), ("w3", 500, -np.inf)]:
            payload = huge.copy()
            payload[position] = value
            assert not box.add(Message(sender, "ps0", "gradient", 0, payload))
    assert box.rejected == {"non_finite": 3}
