"""Protocol properties with observable consequences, in the deterministic in-process runtime:
load-time checks that stop a run that could not work, tie-breaks and fallbacks that decide
which vector a node uses, and whole runs under omniscient attacks."""

from __future__ import annotations

import numpy as np
import pytest

from byzsgd.config import load_config
from byzsgd.messages import broadcast
from byzsgd.protocols import PROTOCOLS
from byzsgd.registry import ConfigError
from byzsgd.training import Workload
from tests.conftest import make_config
from tests.internal_api import majority

# -- load-time checks ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["byzsgd", "byzsgd-sync"])
def test_a_worker_rule_that_cannot_run_on_the_quorum_fails_at_load_time(protocol):
    # Bulyan with f_w=2 needs 4*2+3 = 11 gradients; a server's quorum is n_w - f_w = 5.
    with pytest.raises(ConfigError, match=r"aggregator\.name='bulyan' with f=2 needs 11 .* quorum has 5"):
        make_config(protocol=protocol, aggregator={"name": "bulyan"})
    make_config(protocol=protocol, aggregator={"name": "bulyan"}, nodes={"n_w": 13, "f_w": 2})  # quorum 11: fine


def test_a_ps_worker_rule_that_cannot_run_on_the_quorum_fails_at_load_time():
    nodes = {"n_ps": 1, "f_ps": 0, "n_w": 7, "f_w": 2}
    with pytest.raises(ConfigError, match=r"aggregator\.name='bulyan' with f=2 needs 11"):
        make_config(protocol="ps", nodes=nodes, aggregator={"name": "bulyan"})


def test_a_model_rule_that_cannot_run_on_the_quorum_fails_at_load_time():
    # Bulyan with f_ps=1 needs 7 models; a worker's quorum is n_ps - f_ps = 4.
    with pytest.raises(ConfigError, match=r"byzsgd\.model_rule='bulyan' with f=1 needs 7 .* quorum has 4"):
        load_config(None, ["runtime=local", "byzsgd.model_rule=bulyan"])
    load_config(None, ["runtime=local", "byzsgd.model_rule=bulyan", "nodes.n_ps=8", "nodes.f_ps=1"])


@pytest.mark.parametrize("period", [0, -3])
def test_a_gather_period_below_one_fails_at_load_time(period):
    with pytest.raises(ConfigError, match=rf"byzsgd\.period={period}: must be at least 1"):
        load_config(None, ["runtime=local", f"byzsgd.period={period}"])
    assert load_config(None, ["runtime=local", "byzsgd.period=1"]).options.period == 1


# -- DETOX / ByzShield majority: ties go to the first copy -------------------------------------


@pytest.mark.parametrize("atol", [0.0, 1e-6])
def test_a_tied_majority_goes_to_the_group_that_formed_first(atol):
    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0))
    for copies, first in [([a, b], a), ([b, a], b), ([c, a, b, a, c, b], c), ([a, b, b, a], a)]:
        value, count = majority([x.copy() for x in copies], atol=atol)
        np.testing.assert_array_equal(value, first)
        assert count == sum(np.array_equal(x, first) for x in copies)
    value, count = majority([a, b, b, c], atol=atol)  # no tie: the larger group wins wherever it is
    np.testing.assert_array_equal(value, b)
    assert count == 2


# -- synchronous ByzSGD: when every candidate model is rejected, the median --------------------


def test_a_sync_worker_that_rejects_every_model_falls_back_to_their_median():
    config = make_config(protocol="byzsgd-sync", optimizer={"lr": 0.2}, **{"byzsgd-sync": {"period": 10}})
    workload = Workload(config)
    worker = PROTOCOLS["byzsgd-sync"].make_node(config, "w0", workload)
    servers = [f"ps{i}" for i in range(5)]
    x0 = workload.initial_vector().numpy()

    def deliver(step, models):
        for server, payload in models.items():
            worker.on_message(broadcast(server, ["w0"], "model", step, payload)[0])

    deliver(0, {s: x0 for s in servers[:4]})  # step 0 is a Gather step
    # Step 1: four models, each far beyond the outlier filter's bound; no coordinate-wise order
    # makes the first or last of them the median.
    offsets = {"ps1": 300.0, "ps2": 100.0, "ps3": 120.0, "ps4": 110.0}
    deliver(1, {s: x0 + v for s, v in offsets.items()})
    assert worker.accepted_from == ["median", "median"]
    assert worker.rejected["filter_fallback"] == 1
    assert worker.rejected["filter_outlier"] == 4
    np.testing.assert_allclose(worker.previous[0].numpy(), x0 + 115.0, rtol=1e-6)  # median of 100, 110, 120, 300
