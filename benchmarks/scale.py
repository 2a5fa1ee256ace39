"""How far one machine goes: the largest ByzSGD deployment on Ray, and 1,000 simulated nodes.

Part 1 (Ray): one actor per node, e.g. 10 servers + 30 workers, or the nodes hosted by
``--actors`` actors (``ray.actors``); reports ray.init time, the time until every actor is up and
step 0 is evaluated, steps/s, and memory per actor (RSS, and PSS, which splits the pages actors
share, such as torch's libraries, among them).

Part 2 (in-process runtime, ``runtime: local``): the same protocol simulated with n nodes in
one process, n up to 1,000, showing how the time per step grows with n (ByzSGD sends
2 n_ps n_w messages per step, so the work grows with the product).

    python benchmarks/scale.py                           # both parts
    python benchmarks/scale.py --skip-ray --nodes 100 1000
    python benchmarks/scale.py --skip-local --servers 20 --workers 200 --actors 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.overhead import cpu_snapshot, cpu_used  # noqa: E402

SMALL_TASK = {
    "data": {"dataset": "synthetic", "batch_size": 16},
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.2},
    "aggregator": {"name": "mda"},
    "attack": {"name": "none"},
    "server_attack": {"name": "none"},
    "device": "cpu",
}


def actor_memory_mib() -> list[tuple[float, float]]:
    """(RSS, PSS) in MiB of every node actor process under this driver."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    sizes = []
    for pid in mine:
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::NodeActor"):
                continue
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except OSError:
            continue
        sizes.append((int(fields["Rss"].split()[0]) / 1024, int(fields["Pss"].split()[0]) / 1024))
    return sizes


def ray_part(args: argparse.Namespace) -> None:
    import ray

    from byzsgd.experiment import config_from_dict
    from byzsgd.runner import run_experiment

    n_ps, n_w = args.servers, args.workers
    data = {
        **SMALL_TASK,
        "name": "scale-ray",
        "runtime": "ray",
        "steps": args.ray_steps,
        "eval_every": args.ray_steps,
        "nodes": {"n_ps": n_ps, "f_ps": (n_ps - 2) // 3, "n_w": n_w, "f_w": min(3, (n_w - 1) // 3)},
        "ray": {"num_cpus_per_actor": 0.04, "actors": args.actors},
    }
    config = config_from_dict(data)
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    memory: list[tuple[float, float]] = []
    snapshots: dict[int, Any] = {}

    def on_row(row: dict[str, Any]) -> None:
        snapshots[row["step"]] = cpu_snapshot()
        if row["step"] == config.steps:  # before the actors are killed
            memory.extend(actor_memory_mib())

    try:
        with tempfile.TemporaryDirectory() as out:
            result = run_experiment(config, Path(out) / "run", on_row=on_row)
    finally:
        ray.shutdown()
    rows = result.rows
    cpu_s = sum(cpu_used(snapshots[0], snapshots[config.steps]).values())
    startup = rows[0]["time_s"]
    rate = config.steps / (rows[-1]["time_s"] - startup)
    nodes = config.nodes
    print(
        f"\nRay, {n_ps} servers (f={nodes.f_ps}) + {n_w} workers (f={nodes.f_w}) in {result.summary['actors']} actors, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}:"
    )
    print(f"  ray.init {init_s:.1f} s; actors up and step 0 evaluated after {startup:.1f} s")
    print(f"  {rate:.2f} steps/s over {config.steps} steps; CPU of the steps (all processes) {cpu_s:.0f} s")
    if memory:
        rss, pss = zip(*memory)
        print(
            f"  memory per actor ({len(memory)} measured): RSS {sum(rss) / len(rss):.0f} MiB, "
            f"PSS {sum(pss) / len(pss):.0f} MiB; all actors PSS {sum(pss) / 1024:.2f} GiB"
        )


def local_part(args: argparse.Namespace) -> None:
    from byzsgd.experiment import config_from_dict
    from byzsgd.runner import run_experiment

    print(f"\nIn-process runtime, ByzSGD, one process, {args.local_steps} steps (servers = n/10):")
    print(f"  {'nodes':>6s} {'n_ps':>5s} {'n_w':>5s} {'msgs/step':>10s} {'s/step':>8s} {'CPU s/step':>10s} {'acc':>6s}")
    for n in args.nodes:
        n_ps = max(2, n // 10)
        n_w = n - n_ps
        data = {
            **SMALL_TASK,
            "name": f"scale-{n}",
            "runtime": "local",
            "steps": args.local_steps,
            "eval_every": args.local_steps,
            "nodes": {"n_ps": n_ps, "f_ps": 0 if n_ps < 5 else 1, "n_w": n_w, "f_w": 1},
        }
        config = config_from_dict(data)
        with tempfile.TemporaryDirectory() as out:
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_experiment(config, Path(out) / "run")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        last = result.rows[-1]
        print(
            f"  {n:6d} {n_ps:5d} {n_w:5d} {last['messages'] / config.steps:10.0f} {wall / config.steps:8.3f} "
            f"{cpu / config.steps:10.3f} {last['test_acc']:6.3f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--workers", type=int, default=30)
    parser.add_argument("--ray-steps", type=int, default=20)
    parser.add_argument("--actors", type=int, help="ray.actors (default: one actor per node)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[25, 100, 250, 500, 1000])
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as each Ray actor does: the comparison is per core
    if not args.skip_ray:
        ray_part(args)
    if not args.skip_local:
        local_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
