"""Final test accuracy on digits under every attack, in the deterministic in-process runtime.

    .venv/bin/python benchmarks/attack_table.py [--steps 100] [--jobs 2] [--attacks ipm optimal-ipm ...] [--no-servers]

Rows: every worker attack x aggregator {mean, median, krum, mda, krum*} (servers correct), then
every server attack x protocol {byzsgd, byzsgd-sync} (workers correct, MDA). n_ps=5/f_ps=1,
n_w=10/f_w=3 (f_w = floor((n_w - 1)/3): 3 Byzantine workers, 1 Byzantine server), MLP, lr 0.1,
seed 0. Prints a markdown table; "n/a" marks a rule that cannot run on the quorum, "stall" a run
whose quorum never fills. ``--attacks`` keeps only the worker attacks of those names,
``--no-servers`` drops the server-attack table (a smaller run on a shared machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from typing import Any

WORKER_ATTACKS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("signflip", {"scale": 4.0}),
    ("gaussian", {"std": 200.0}),
    ("zero", {}),
    ("nan", {"value": "nan"}),
    ("nan", {"value": "inf"}),
    ("alie", {}),
    ("alie", {"z_formula": "paper"}),
    ("alie", {"z": 1.0}),
    ("ipm", {"eps": 0.1}),
    ("ipm", {"eps": 0.5}),
    ("ipm", {"eps": 1.0}),
    ("mimic", {}),
    ("labelflip", {}),
    ("optimal-alie", {}),
    ("optimal-ipm", {}),
    ("silent", {}),
    ("crash", {"step": 50}),
    ("drop", {"p": 0.5}),
    ("slow", {"delay": 5.0}),
]
AGGREGATORS = ["mean", "median", "krum", "mda", "krum*"]
# Krum with f = 3 needs 2f + 3 = 9 inputs, but a ByzSGD server aggregates the first n_w - f_w = 7
# gradients: it cannot run at f_w = 3. "krum*" is Krum declared for f_w = 2 (a quorum of 8),
# facing the same 3 Byzantine workers: one more than it was told to tolerate.
SERVER_ATTACKS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("gaussian", {"std": 200.0}),
    ("signflip", {"scale": 4.0}),
    ("stale", {"lag": 5}),
    ("equivocation", {"poison": "signflip", "poison_params": {"scale": 4.0}}),
    ("nan", {}),
    ("silent", {}),
    ("crash", {"step": 50}),
]
PROTOCOLS = ["byzsgd", "byzsgd-sync"]


def label(name: str, params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k != "poison_params"}
    return name + (" " + ",".join(f"{k}={v}" for k, v in shown.items()) if shown else "")


def cell(accuracy: float | str | None) -> str:
    if accuracy is None:
        return "n/a"
    return accuracy if isinstance(accuracy, str) else f"{accuracy:.3f}"


def run_one(job: tuple[str, str, dict, str, dict, str, int]) -> float | str | None:
    import torch

    from byzsgd.experiment import config_from_dict
    from byzsgd.registry import ConfigError
    from byzsgd.runner import run_experiment
    from byzsgd.runtime.local import StalledError

    torch.set_num_threads(1)
    protocol, attack, params, server_attack, server_params, aggregator, steps = job
    byzantine_workers = {"count": 3} if attack != "none" else {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = config_from_dict(
                {
                    "name": "attack-table",
                    "seed": 0,
                    "protocol": protocol,
                    "runtime": "local",
                    "device": "cpu",
                    "steps": steps,
                    "eval_every": steps,
                    "output_dir": tmp,
                    "nodes": {"n_ps": 5, "f_ps": 1, "n_w": 10, "f_w": 3},
                    "data": {"dataset": "digits"},
                    "model": {"name": "mlp"},
                    "optimizer": {"lr": 0.1},
                    "aggregator": {"name": "mda" if aggregator == "krum*" else aggregator},
                    "attack": {"name": attack, "params": params, **byzantine_workers},
                    "server_attack": {"name": server_attack, "params": server_params},
                }
            )
        except ConfigError as error:  # e.g. Krum needs 2f+3 inputs, more than the async quorum n_w - f_w
            print(f"# {protocol} {aggregator}: not runnable: {error}", file=sys.stderr, flush=True)
            return None
        if aggregator == "krum*":  # past validation on purpose: declare f_w = 2, keep 3 attackers
            config.nodes.f_w = 2
            config.aggregator.name = "krum"
        try:
            accuracy = run_experiment(config).rows[-1]["test_acc"]
        except StalledError:  # krum* with more mute workers than it waits past: the quorum never fills
            return "stall"
    accuracy = float("nan") if accuracy is None else accuracy
    print(
        f"# {protocol} {label(attack, params)} / server {label(server_attack, server_params)} / {aggregator}: "
        f"{accuracy:.3f}",
        file=sys.stderr,
        flush=True,
    )
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--attacks", nargs="+", help="only these worker attacks (names)")
    parser.add_argument("--no-servers", action="store_true", help="skip the server-attack table")
    args = parser.parse_args()
    worker_attacks = [(n, p) for n, p in WORKER_ATTACKS if args.attacks is None or n in args.attacks]
    worker_jobs = [
        ("byzsgd", name, params, "none", {}, aggregator, args.steps)
        for name, params in worker_attacks
        for aggregator in AGGREGATORS
    ]
    server_attacks = [] if args.no_servers else SERVER_ATTACKS
    server_jobs = [
        (protocol, "none", {}, name, params, "mda", args.steps)
        for name, params in server_attacks
        for protocol in PROTOCOLS
    ]
    started = time.perf_counter()
    jobs = worker_jobs + server_jobs
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = list(pool.imap(run_one, jobs, chunksize=1))  # in order, so rows print as they complete
    worker_results, server_results = results[: len(worker_jobs)], results[len(worker_jobs) :]
    print(f"Final test accuracy on digits after {args.steps} steps (n_ps=5/f_ps=1, n_w=10/f_w=3, seed 0)\n")
    print("| worker attack (servers correct) | " + " | ".join(AGGREGATORS) + " |")
    print("|---" * (len(AGGREGATORS) + 1) + "|")
    for i, (name, params) in enumerate(worker_attacks):
        row = worker_results[i * len(AGGREGATORS) : (i + 1) * len(AGGREGATORS)]
        print(f"| {label(name, params)} | " + " | ".join(cell(a) for a in row) + " |")
    if server_attacks:
        print("\n| server attack (workers correct, MDA) | " + " | ".join(PROTOCOLS) + " |")
        print("|---" * (len(PROTOCOLS) + 1) + "|")
    for i, (name, params) in enumerate(server_attacks):
        row = server_results[i * len(PROTOCOLS) : (i + 1) * len(PROTOCOLS)]
        print(f"| {label(name, params)} | " + " | ".join(cell(a) for a in row) + " |")
    print(f"\n({len(results)} runs in {time.perf_counter() - started:.0f} s wall, on a shared machine: noisy)")


if __name__ == "__main__":
    main()
