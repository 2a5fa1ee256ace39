"""What Byzantine resilience costs on Ray: steps/s and time-to-accuracy against vanilla SGD.

Same data, model and worker count for every system, no attack (the cost of resilience itself):

  (a) vanilla: one parameter server averaging the gradients (``protocol: ps``, ``aggregator: mean``)
  (b) ps+MDA:  one parameter server with MDA over the first n_w - f_w gradients
  (c) ByzSGD:  replicated servers, asynchronous (``protocol: byzsgd``)
  (d) ByzSGD-sync: the synchronous variant (``protocol: byzsgd-sync``), skipped if not installed

Besides wall-clock figures it reports CPU time per step, summed over every process of the local
Ray instance (driver, raylet, actors): on a shared machine wall time depends on what else runs,
CPU time much less. All runs share one local Ray instance, so start-up is the actors' alone.
Each system runs ``--repeat`` times (the median run is shown) per ``--actors`` value: one actor
per node (every message a Ray call), and the nodes hosted by a few actors (``ray.actors``: servers
in some, workers in the others, messages between actors batched).

    python benchmarks/overhead.py                    # digits + MLP (the demo's workload)
    python benchmarks/overhead.py --actors 3 --repeat 1   # only the nodes hosted by 3 actors, once
    python benchmarks/overhead.py --workload mnist-cnn --steps 150
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

WORKLOADS = {
    "digits-mlp": {"data": {"dataset": "digits", "batch_size": 32}, "model": {"name": "mlp", "hidden": 64}},
    "mnist-cnn": {"data": {"dataset": "mnist5k", "batch_size": 64}, "model": {"name": "cnn"}},
}


def systems(n_w: int, f_w: int, n_ps: int, f_ps: int) -> dict[str, dict[str, Any]]:
    replicated = {"n_ps": n_ps, "f_ps": f_ps, "n_w": n_w, "f_w": f_w}
    single = {"n_ps": 1, "f_ps": 0, "n_w": n_w, "f_w": f_w}
    return {
        "vanilla": {"protocol": "ps", "aggregator": {"name": "mean"}, "nodes": single | {"f_w": 0}},
        "ps+mda": {"protocol": "ps", "aggregator": {"name": "mda"}, "nodes": single},
        "byzsgd": {"protocol": "byzsgd", "aggregator": {"name": "mda"}, "nodes": replicated},
        "byzsgd-sync": {"protocol": "byzsgd-sync", "aggregator": {"name": "mda"}, "nodes": replicated},
    }


def cpu_snapshot(root: int | None = None) -> dict[int, tuple[bytes, int]]:
    """(command line, user + system clock ticks) of ``root`` (default: this process) and every
    live descendant, from /proc (Linux; empty elsewhere)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    seen: dict[int, tuple[bytes, int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            name = Path(f"/proc/{entry}/cmdline").read_bytes()[:64]
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is the parent pid
        seen[pid] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
    mine, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            mine[pid] = seen[pid]
        stack.extend(children.get(pid, []))
    return mine


def cpu_used(before: dict[int, tuple[bytes, int]], after: dict[int, tuple[bytes, int]]) -> dict[int, float]:
    """CPU seconds each process alive at ``after`` used since ``before`` (all of it if it is new);
    processes that ended in between are not counted."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (ticks - before.get(pid, (b"", 0))[1]) / tick for pid, (_, ticks) in after.items()}


def run_one(
    name: str, section: dict[str, Any], args: argparse.Namespace, actors: int | None, out: Path
) -> dict[str, Any] | None:
    from byzsgd.experiment import config_from_dict
    from byzsgd.protocols import PROTOCOLS
    from byzsgd.registry import ConfigError
    from byzsgd.runner import run_experiment

    if section["protocol"] not in PROTOCOLS.names():
        print(f"  {name}: protocol {section['protocol']!r} is not installed; skipped", flush=True)
        return None
    data = {
        "name": name,
        "seed": args.seed,
        "runtime": "ray",
        "steps": args.steps,
        "eval_every": args.eval_every,
        "device": "cpu",
        "optimizer": {"name": "sgd", "lr": args.lr},
        "attack": {"name": "none"},
        "server_attack": {"name": "none"},
        **WORKLOADS[args.workload],
        **section,
        "ray": {"actors": actors},
    }
    try:
        config = config_from_dict(data)
    except ConfigError as error:
        print(f"  {name}: skipped ({error})", flush=True)
        return None
    marks: dict[str, Any] = {}

    def on_row(row: dict[str, Any]) -> None:
        if row["step"] == 0:
            marks["step0"] = cpu_snapshot()
        if row["step"] == config.steps:
            marks["end"] = cpu_snapshot()  # before the actors are killed

    before = cpu_snapshot()
    result = run_experiment(config, out / name, on_row=on_row)
    startup_cpu = cpu_used(before, marks["step0"])
    run_cpu = cpu_used(marks["step0"], marks["end"])
    # The busiest node actor bounds steps/s where every node has a core of its own (a cluster).
    actor_cpu = [used for pid, used in run_cpu.items() if marks["end"][pid][0].startswith(b"ray::")]
    rows = result.rows
    t0 = rows[0]["time_s"]
    run_s = rows[-1]["time_s"] - t0
    reached = next((r for r in rows if r["test_acc"] >= args.target), None)
    return {
        "system": name,
        "actors": result.summary.get("actors"),
        "startup_s": t0,
        "steps_per_s": args.steps / run_s,
        "cpu_ms_per_step": 1e3 * sum(run_cpu.values()) / args.steps,
        "busiest_actor_ms_per_step": 1e3 * max(actor_cpu, default=0.0) / args.steps,
        "startup_cpu_s": sum(startup_cpu.values()),
        "steps_to_target": reached["step"] if reached else None,
        "time_to_target_s": reached["time_s"] - t0 if reached else None,
        "final_acc": rows[-1]["test_acc"],
    }


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]]) -> None:
    base = next((r for r in results if r["system"] == "vanilla"), None)
    print(
        f"{'system':12s} {'actors':>6s} {'start s':>8s} {'start CPU s':>11s} "
        f"{'steps/s':>8s} {'range':>11s} {'x vanilla':>9s} "
        f"{'CPU ms/step':>11s} {'x vanilla':>9s} {'busiest ms':>10s} {'x vanilla':>9s} "
        f"{'steps→acc':>9s} {'s→acc':>7s} {'final acc':>9s}"
    )
    for r in results:
        speed = r["steps_per_s"] / base["steps_per_s"] if base else None
        cpu = base["cpu_ms_per_step"] / r["cpu_ms_per_step"] if base and r["cpu_ms_per_step"] else None
        busy = r["busiest_actor_ms_per_step"]
        node = base["busiest_actor_ms_per_step"] / busy if base and busy else None
        print(
            f"{r['system']:12s} {fmt(r['actors'], 'd'):>6s} {r['startup_s']:8.1f} {r['startup_cpu_s']:11.1f} "
            f"{r['steps_per_s']:8.2f} {'{:.1f}-{:.1f}'.format(*r['steps_per_s_range']):>11s} "
            f"{fmt(speed, '.2f'):>9s} {r['cpu_ms_per_step']:11.1f} {fmt(cpu, '.2f'):>9s} "
            f"{busy:10.1f} {fmt(node, '.2f'):>9s} "
            f"{fmt(r['steps_to_target'], 'd'):>9s} {fmt(r['time_to_target_s'], '.1f'):>7s} {r['final_acc']:9.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits-mlp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--target", type=float, default=0.8, help="test accuracy for time-to-accuracy")
    parser.add_argument("--n-w", type=int, default=7)
    parser.add_argument("--f-w", type=int, default=2)
    parser.add_argument("--n-ps", type=int, default=5)
    parser.add_argument("--f-ps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--actors",
        nargs="+",
        default=["node", str((os.cpu_count() or 1) + 1)],
        help="ray.actors values to compare: 'node' (one actor per node) or a count "
        "(default: node, and cores + 1: one actor for the servers and one per core for the workers)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per system and placement; the median is shown")
    parser.add_argument("--only", nargs="*", help="run only these systems")
    parser.add_argument("--out", help="keep the runs' results here (default: a temporary folder)")
    args = parser.parse_args(argv)

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - started:.1f} s; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    tables = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch)
        try:
            for actors in args.actors:
                count = None if actors == "node" else int(actors)
                rows = tables[actors] = []
                for name, section in systems(args.n_w, args.f_w, args.n_ps, args.f_ps).items():
                    if args.only and name not in args.only:
                        continue
                    print(f"running {name}, ray.actors={count}, {args.repeat}x ...", flush=True)
                    folder = out / f"actors-{actors}"
                    runs = [run_one(name, section, args, count, folder / str(i)) for i in range(args.repeat)]
                    runs = sorted((r for r in runs if r), key=lambda r: r["steps_per_s"])
                    if runs:  # the median run, and the spread of steps/s over the repeats
                        row = runs[len(runs) // 2]
                        row["steps_per_s_range"] = (runs[0]["steps_per_s"], runs[-1]["steps_per_s"])
                        rows.append(row)
        finally:
            ray.shutdown()
    print(
        f"\n{args.workload}, {args.n_w} workers, {args.steps} steps, no attack; "
        f"time-to-accuracy at test_acc >= {args.target}; load average now {os.getloadavg()[0]:.1f}"
    )
    for actors, results in tables.items():
        print(f"\nray.actors: {'one per node' if actors == 'node' else actors}")
        print_table(results)
    print(
        "\nx vanilla: steps/s ratio; vanilla's CPU per step (all processes) over the system's; and vanilla's\n"
        "busiest-actor CPU per step over the system's, the steps/s ratio to expect when every node has its\n"
        "own core (a cluster). All three: higher is better."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
