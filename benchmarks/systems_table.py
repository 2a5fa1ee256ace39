"""Accuracy and throughput of every system against worker attacks, in the in-process runtime.

    .venv/bin/python benchmarks/systems_table.py [--steps 200] [--attacks signflip alie] [--jobs 2]

One setting for all rows: digits, MLP (64 hidden), n_w=15 workers of which f_w=2 Byzantine
(through the fault injector, DETOX/ByzShield's worst-case set), seed 0, correct servers.
ByzSGD runs 5 servers tolerating f_ps=1, the others one parameter server. Every system trains
on the same global batch: data.batch_size=480 samples per step, split over the distinct
mini-batches the system draws (data.batch_accounting=per_step; --batch-accounting per_worker
gives each mini-batch 32 samples instead, so redundant systems see fewer samples per step).
Columns: final test accuracy, steps per second of wall clock (one torch thread per run), bytes
of one worker message, worker gradients computed per step and samples used per step. Prints a
markdown table; --json writes rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from typing import Any

SYSTEMS: dict[str, dict[str, Any]] = {
    "ps + mean": dict(protocol="ps", aggregator={"name": "mean"}),
    "ps + mda": dict(protocol="ps", aggregator={"name": "mda"}),
    "byzsgd (mda, 5 servers)": dict(protocol="byzsgd", nodes={"n_ps": 5, "f_ps": 1}),
    "byzsgd-sync (mda, 5 servers)": dict(protocol="byzsgd-sync", nodes={"n_ps": 5, "f_ps": 1}),
    "draco repetition": dict(protocol="draco", draco={"code": "repetition"}),
    "draco cyclic": dict(protocol="draco", draco={"code": "cyclic"}),
    "detox (groups of 3) + median": dict(protocol="detox", aggregator={"name": "median"}),
    "byzshield (mols 5x3) + median": dict(
        protocol="detox", detox={"assignment": "mols", "replication": 3}, aggregator={"name": "median"}
    ),
    "solon (r=15, r_c=11)": dict(protocol="solon", solon={"load": 15, "compression": 11}),
    "ps + ctma(median), momentum 0.9": dict(
        protocol="ps",
        aggregator={"name": "ctma", "params": {"base": "median"}},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
    ),
    "ps + ctma(median), mu2sgd": dict(
        protocol="ps", aggregator={"name": "ctma", "params": {"base": "median"}}, optimizer={"name": "mu2sgd"}
    ),
}

ATTACKS: dict[str, dict[str, Any]] = {
    "none": {},
    "signflip": {"scale": 4.0},
    "alie": {},
    "gaussian": {"std": 200.0},
}


BATCH = {"per_step": 480, "per_worker": 32}  # the same global batch for ps: 15 workers x 32


def experiment(system: str, attack: str, steps: int, accounting: str = "per_step") -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "systems",
        "seed": 0,
        "runtime": "local",
        "steps": steps,
        "eval_every": steps,
        "device": "cpu",
        "nodes": {"n_ps": 1, "f_ps": 0, "n_w": 15, "f_w": 2},
        "data": {"dataset": "digits", "batch_size": BATCH[accounting], "batch_accounting": accounting},
        "model": {"name": "mlp", "hidden": 64},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "aggregator": {"name": "mda"},
        "attack": {"name": attack, "params": ATTACKS[attack]},
        "server_attack": {"name": "none"},
    }
    for key, value in SYSTEMS[system].items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return data


def run_one(job: tuple[str, str, int, str]) -> dict[str, Any]:
    import torch

    from byzsgd.experiment import config_from_dict
    from byzsgd.runner import run_experiment

    torch.set_num_threads(1)
    system, attack, steps, accounting = job
    config = config_from_dict(experiment(system, attack, steps, accounting))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = run_experiment(config, run_dir=folder)
        elapsed = time.perf_counter() - started
    final = result.rows[-1]
    workers = config.nodes.n_w
    return {
        "system": system,
        "attack": attack,
        "test_acc": final["test_acc"],
        "steps_per_s": steps / elapsed,
        "worker_message_bytes": message_bytes(config),
        "gradients_per_step": gradients_per_step(config, workers),
        "samples_per_step": samples_per_step(config),
    }


def message_bytes(config: Any) -> int:
    """Bytes of one worker -> server message (built from a real worker answering a model)."""
    from byzsgd.messages import Message
    from byzsgd.protocols import PROTOCOLS
    from byzsgd.training import Workload

    workload = Workload(config)
    worker = PROTOCOLS[config.protocol].make_node(config, "w0", workload)
    model = workload.initial_vector().numpy()
    outgoing = worker.start()  # ByzSGD-sync's worker draws its batch and sends its pulls here
    for server in range(config.nodes.n_ps):  # ByzSGD's workers wait for a quorum of servers' models
        outgoing += worker.on_message(Message(f"ps{server}", "w0", "model", 0, model))
    return next(int(m.payload.nbytes) for m in outgoing if m.kind == "gradient")


def gradients_per_step(config: Any, workers: int) -> int:
    from byzsgd.protocols import PROTOCOLS
    from byzsgd.protocols.coded import CodedProtocol

    protocol = PROTOCOLS[config.protocol]
    if not isinstance(protocol, CodedProtocol):
        return workers
    scheme = protocol.make_scheme(config, 2)
    return sum(len(scheme.partitions_of(w)) for w in range(workers))


def samples_per_step(config: Any) -> int:
    """Samples a step draws: one mini-batch per worker, or per partition for the coded systems
    (replicas of a partition draw the same batch)."""
    from byzsgd.data import batch_size_of
    from byzsgd.protocols import PROTOCOLS
    from byzsgd.protocols.coded import CodedProtocol

    protocol = PROTOCOLS[config.protocol]
    count = config.nodes.n_w
    if isinstance(protocol, CodedProtocol):
        count = protocol.make_scheme(config, 2).num_partitions
    return sum(batch_size_of(config.data, index, count) for index in range(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--attacks", nargs="+", default=["signflip", "alie"], choices=sorted(ATTACKS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS), metavar="SYSTEM")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--batch-accounting", choices=sorted(BATCH), default="per_step")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    jobs = [(s, attack, args.steps, args.batch_accounting) for s in args.systems for attack in args.attacks]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.map(run_one, jobs, chunksize=1)
    batch = f"batch_size={BATCH[args.batch_accounting]} {args.batch_accounting}"
    print(f"digits, MLP, n_w=15, f_w=2, {batch}, {args.steps} steps, local runtime, seed 0\n")
    print("| system | attack | test acc | steps/s | worker msg bytes | gradients/step | samples/step |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['system']} | {row['attack']} | {row['test_acc']:.3f} | {row['steps_per_s']:.1f} "
            f"| {row['worker_message_bytes']} | {row['gradients_per_step']} | {row['samples_per_step']} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
