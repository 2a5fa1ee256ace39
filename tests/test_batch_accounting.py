"""data.batch_accounting: per_step gives every system the same number of samples per step."""

import pytest

from byzsgd.protocols import PROTOCOLS
from byzsgd.protocols.coded import CodedWorker
from byzsgd.registry import ConfigError
from byzsgd.training import Workload
from tests.conftest import make_config

ONE_SERVER = {"n_ps": 1, "f_ps": 0, "n_w": 15, "f_w": 2}
SYSTEMS = {  # the systems table's rows at n_w = 15
    "ps": dict(protocol="ps", aggregator={"name": "median"}),
    "byzsgd": dict(protocol="byzsgd", nodes={"n_ps": 5, "f_ps": 1, "n_w": 15, "f_w": 2}),
    "byzsgd-sync": dict(protocol="byzsgd-sync", nodes={"n_ps": 5, "f_ps": 1, "n_w": 15, "f_w": 2}),
    "draco-repetition": dict(protocol="draco"),
    "draco-cyclic": dict(protocol="draco", draco={"code": "cyclic"}),
    "detox": dict(protocol="detox", aggregator={"name": "median"}),
    "byzshield-mols": dict(protocol="detox", detox={"assignment": "mols"}, aggregator={"name": "median"}),
    "solon": dict(protocol="solon", solon={"load": 15, "compression": 11}),
}


def samples_drawn_in_one_step(config):
    """Build every worker, draw one step's batches, count each distinct batch once (replicas of
    a partition draw the same batch)."""
    protocol, workload = PROTOCOLS[config.protocol], Workload(config)
    batches = {}
    for worker_id in protocol.worker_ids(config):
        worker = protocol.make_node(config, worker_id, workload)
        if isinstance(worker, CodedWorker):
            for part, sampler in worker.samplers.items():
                batches[("partition", part)] = len(sampler.next())
        else:
            batches[("worker", worker_id)] = len(worker.sampler.next())
    return sum(batches.values())


def config_for(system, accounting, batch_size):
    sections = {"nodes": ONE_SERVER, **SYSTEMS[system]}
    data = {"dataset": "digits", "batch_size": batch_size, "batch_accounting": accounting}
    return make_config(data=data, **sections)


def test_per_step_accounting_gives_every_system_the_same_samples_per_step():
    drawn = {system: samples_drawn_in_one_step(config_for(system, "per_step", 480)) for system in SYSTEMS}
    assert set(drawn.values()) == {480}, drawn


def test_per_worker_accounting_draws_batch_size_per_distinct_mini_batch():
    drawn = {system: samples_drawn_in_one_step(config_for(system, "per_worker", 8)) for system in SYSTEMS}
    # DRACO repetition: 3 groups of 5 workers share 3 batches; DETOX 5 files; MOLS 25 files; the rest 15.
    assert drawn == {
        "ps": 120, "byzsgd": 120, "byzsgd-sync": 120, "draco-repetition": 24, "draco-cyclic": 120,
        "detox": 40, "byzshield-mols": 200, "solon": 120,
    }  # fmt: skip


def test_per_step_needs_a_sample_for_every_mini_batch():
    with pytest.raises(ConfigError, match="data.batch_size=10 with data.batch_accounting=per_step: must be at least"):
        config_for("ps", "per_step", 10)
    with pytest.raises(ConfigError, match="a step draws 25 mini-batches"):
        config_for("byzshield-mols", "per_step", 20)
