"""The Ray actors' call checks (byzsgd.runtime.auth), without Ray: who may deliver as whom,
and who may control an actor."""

from byzsgd.runtime.auth import Gate, draw_keys

HOME = {"ps0": 0, "ps1": 0, "w0": 1, "w1": 2}  # actor 0 hosts the servers, actors 1 and 2 a worker each


def gates():
    keys = draw_keys(3)
    gates = []
    for own in keys:
        gate = Gate(own.driver)
        gate.connect(own, HOME)
        gates.append(gate)
    return keys, gates


def test_each_pair_shares_one_secret_that_no_third_actor_holds():
    keys = draw_keys(4)
    for i in range(4):
        assert sorted(keys[i].pairs) == [j for j in range(4) if j != i]
        for j in range(4):
            if i != j:
                assert keys[i].pairs[j] == keys[j].pairs[i]
    secrets_of = [set(k.pairs.values()) | {k.driver} for k in keys]
    assert not (secrets_of[0] & secrets_of[1]) - {keys[0].pairs[1]}  # 0 and 1 share only their pair's secret
    assert len({k.driver for k in keys}) == 4
    assert keys[0].driver.hex() not in repr(keys[0]) and keys[0].pairs[1].hex() not in repr(keys[0])


def test_a_message_from_a_node_the_caller_hosts_is_admitted():
    keys, (servers, _, _) = gates()
    header = ("w0", "ps0", "gradient", 0, 0, 0.0)
    assert servers.admit(1, keys[1].pairs[0], [header], 1) == [header]
    assert not servers.rejected


def test_a_sender_the_caller_does_not_host_is_a_forgery():
    keys, (servers, _, _) = gates()
    # Actor 1 (hosting w0) speaks as w1 (actor 2's) and as ps1 (a node of the receiving actor: a timer or
    # a server's own message), with its genuine secret.
    forged = [
        ("w1", "ps0", "gradient", 0, 0, 0.0),
        ("ps1", "ps0", "model", 0, 0, 0.0),
        ("ps0", "ps0", "timeout", 0, 0, 0.0),
    ]
    genuine = ("w0", "ps0", "gradient", 0, 0, 0.0)
    assert servers.admit(1, keys[1].pairs[0], [*forged, genuine], 1) == [genuine]
    assert servers.rejected == {"forged": 3}


def test_a_receiver_not_hosted_here_is_refused():
    keys, (servers, _, _) = gates()
    assert servers.admit(1, keys[1].pairs[0], [("w0", "w1", "model", 0, 0, 0.0)], 1) == []
    assert servers.rejected == {"forged": 1}


def test_a_wrong_or_missing_secret_or_caller_drops_the_whole_call():
    keys, (servers, _, _) = gates()
    header = ("w0", "ps0", "gradient", 0, 0, 0.0)
    calls = [
        (1, keys[2].pairs[0]),  # actor 2's secret claimed by actor 1
        (1, keys[1].pairs[2]),  # a secret actor 1 holds, but not for this receiver
        (1, b"x" * 16),
        (1, None),
        (1, "not bytes"),
        (0, keys[1].pairs[0]),  # the receiver itself: no pair secret
        (7, keys[1].pairs[0]),  # no such actor
        (True, keys[1].pairs[0]),  # a bool is not an actor index
        ("1", keys[1].pairs[0]),
        ([1], keys[1].pairs[0]),  # unhashable
    ]
    for caller, token in calls:
        assert servers.admit(caller, token, [header], 1) == []
    assert servers.rejected == {"unauthenticated": len(calls)}


def test_an_actor_not_yet_connected_admits_nothing():
    keys = draw_keys(2)
    gate = Gate(keys[0].driver)
    assert gate.admit(1, keys[1].pairs[0], [("w0", "ps0", "gradient", 0, 0, 0.0)], 1) == []
    assert gate.rejected == {"unauthenticated": 1}


def test_malformed_headers_are_counted_and_the_rest_admitted():
    keys, (servers, _, _) = gates()
    good = ("w0", "ps0", "gradient", 3, 1, 0.0)
    bad = [
        ("w0", "ps0", "gradient", 0, 2, 0.0),  # no third payload
        ("w0", "ps0", "gradient", 0, -1, 0.0),
        ("w0", "ps0", "gradient", 0, 0.0, 0.0),
        ("w0", "ps0", "gradient", 0, 0),  # no lead
        ("w0", "ps0", "gradient", 0, 0, float("nan")),
        ("w0", "ps0", "gradient", 0, 0, float("inf")),
        ("w0", "ps0", "gradient", 0, 0, -1e300),
        ("w0", "ps0", "gradient", 0, 0, "1"),
        ["w0", "ps0", "gradient", 0, 0, 0.0],
        (("w0",), "ps0", "gradient", 0, 0, 0.0),
        ("w0", "ps0", None, 0, 0, 0.0),
        None,
    ]
    assert servers.admit(1, keys[1].pairs[0], [*bad, good], 2) == [good]
    assert servers.rejected == {"malformed": len(bad)}
    assert servers.admit(1, keys[1].pairs[0], "not a list", 0) == []
    assert servers.rejected == {"malformed": len(bad) + 1}


def test_control_calls_need_the_driver_secret_of_that_actor():
    keys, (servers, workers, _) = gates()
    assert servers.from_driver(keys[0].driver)
    for token in (keys[1].driver, keys[1].pairs[0], None, b"", "x"):
        assert not servers.from_driver(token)
    assert servers.rejected == {"control": 5}
    assert workers.from_driver(keys[1].driver) and not workers.rejected
