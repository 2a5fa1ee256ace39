"""What Byzantine resilience costs: steps/s and CPU per step against vanilla SGD, and the floor.

Same data, model and worker count for every system, no attack (the cost of resilience itself):

  (a) vanilla: one parameter server averaging the gradients (``protocol: ps``, ``aggregator: mean``)
  (b) ps+MDA:  one parameter server with MDA over the first n_w - f_w gradients
  (c) ByzSGD:  replicated servers, asynchronous (``protocol: byzsgd``)
  (d) ByzSGD-sync: the synchronous variant (``protocol: byzsgd-sync``), skipped if not installed

``--runtime ray`` (the default) runs every system on a local Ray instance and reports CPU time
summed over every process of it (driver, raylet, actors): on a shared machine wall time depends
on what else runs, CPU time much less. Each system runs ``--repeat`` times (the median run is
shown) per ``--actors`` value: one actor per node (every message a Ray call), and the nodes
hosted by a few actors (``ray.actors``: servers in some, workers in the others, messages
between actors batched). ``--nodes K`` starts K raylets on this machine
(``ray.cluster_utils.Cluster``: each its own object store, as K machines would have) and spreads
the actors over them (``ray.placement: spread``). CPU per step excludes the driver's evaluations of the
servers' models (the monitor's work, as in ``--runtime local``). Every Ray row also prints the payload bytes the
actors copy per step (into the object store, or serialized inline into calls) and the bytes that
cross between Ray nodes, as the runtime counts them (``summary.json``), and beside the systems
their floors (the ratios if messages cost nothing) with, per system, the messages per step
and the CPU each costs above the floor. Ray gets byzsgd's default object store (512 MiB) unless
``--store-mb`` says otherwise.

``--runtime local`` runs the same systems in the in-process simulator on one thread (no Ray, no
serialisation): what remains is the protocol's own work. It also prints the bytes that
``to_payload`` and ``stack_payloads`` write per step, and a floor row per system: the same
gradients and the same aggregations (reading their inputs in place, as the nodes do on the
CPU), computed in one process with no messages, no inbox and no copies: the limit of this
machine for that system (and, on Ray, its busiest node's share: a server's or a worker's
arithmetic). CPU figures exclude the
monitor's evaluations of the servers' models. This process runs one OpenMP thread unless
``OMP_NUM_THREADS`` says otherwise, as Ray's actors do.

    python benchmarks/overhead.py                    # digits + MLP (the demo's workload), on Ray
    python benchmarks/overhead.py --runtime local --workload mnist-wide --steps 30
    python benchmarks/overhead.py --actors 3 --repeat 1   # only the nodes hosted by 3 actors, once
    python benchmarks/overhead.py --workload mnist-wide --only vanilla byzsgd --actors node --nodes 3
    python benchmarks/overhead.py --runtime local --workload cifar-resnet18 --steps 3 --repeat 1
    python benchmarks/overhead.py --workload cifar-resnet18 --cifar-root ~/data   # real CIFAR-10
    python benchmarks/overhead.py --device cuda --workload cifar-resnet18 --steps 20 --repeat 1

``--device cuda`` computes on GPUs: in process on this machine's, on Ray on those Ray assigns
the actors hosting ``--gpu-roles`` (``--gpus-per-actor`` each; by default this machine's GPUs
shared equally among those nodes, e.g. 1/12 of one GPU for each of ByzSGD's 12).
The floors on a GPU are timed in wall time once the kernels are done; CPU per step is then the
host's share only, so compare steps/s.

Timings on a shared machine are noisy: repeat, and compare CPU per step rather than wall time.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One OpenMP/BLAS thread in this process, as Ray gives its actors: with two, the idle one spins
# and the floor's CPU time nearly doubled (measured). Set before numpy and torch load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The model and data each workload trains. cifar-resnet18 needs `model: resnet18` and the
# `cifar10` / `synthetic` (with data.params.shape) datasets: a byzsgd without them says so.
WORKLOADS: dict[str, dict[str, Any]] = {
    "digits-mlp": {"data": {"dataset": "digits", "batch_size": 32}, "model": {"name": "mlp", "hidden": 64}},
    "mnist-cnn": {"data": {"dataset": "mnist5k", "batch_size": 64}, "model": {"name": "cnn"}},
    # MLP 784-2048-10 on MNIST-5k: d = 1.63M, the size where aggregation costs show.
    "mnist-wide": {"data": {"dataset": "mnist5k", "batch_size": 32}, "model": {"name": "mlp", "hidden": 2048}},
    # ResNet-18 for 32x32x3 inputs, d ~ 11.2M: CIFAR-10 from --cifar-root, else generated images.
    "cifar-resnet18": {
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "params": {"samples": 512, "shape": [3, 32, 32]},
            "eval_samples": 128,
        },
        "model": {"name": "resnet18"},
    },
}
NEEDS = {"cifar-resnet18": "model 'resnet18' and the datasets 'cifar10'/'synthetic' with data.params"}


def workload_sections(args: argparse.Namespace) -> dict[str, Any]:
    sections = {key: dict(value) for key, value in WORKLOADS[args.workload].items()}
    if args.workload == "cifar-resnet18" and args.cifar_root:
        sections["data"] = {"dataset": "cifar10", "batch_size": 32, "root": args.cifar_root}
    return sections


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
            name = Path(f"/proc/{entry}/cmdline").read_bytes()[:256]
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


class WorkloadUnavailable(RuntimeError):
    """The installed byzsgd does not know a model or dataset the workload needs."""


def make_config(name: str, section: dict[str, Any], args: argparse.Namespace, runtime: str, actors: int | None) -> Any:
    """The experiment config of one system, or None when its protocol is not installed."""
    from byzsgd.experiment import config_from_dict
    from byzsgd.protocols import PROTOCOLS
    from byzsgd.registry import ConfigError

    if section["protocol"] not in PROTOCOLS.names():
        print(f"  {name}: protocol {section['protocol']!r} is not installed; skipped", flush=True)
        return None
    data = {
        "name": name,
        "seed": args.seed,
        "runtime": runtime,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "device": args.device,
        "optimizer": {"name": "sgd", "lr": args.lr},
        "attack": {"name": "none"},
        "server_attack": {"name": "none"},
        **workload_sections(args),
        **section,
    }
    if runtime == "ray":
        data["ray"] = {"actors": actors}
        if args.device == "cuda":  # actors compute on the GPUs Ray assigns them
            share = args.gpus_per_actor or gpu_share(gpu_count(), role_nodes(section["nodes"], args.gpu_roles))
            data["ray"] |= {"num_gpus_per_actor": share, "gpu_roles": args.gpu_roles}
    try:
        return config_from_dict(data)
    except ConfigError as error:
        if args.workload in NEEDS:
            raise WorkloadUnavailable(
                f"workload {args.workload!r} needs {NEEDS[args.workload]}, which this byzsgd does not accept ({error})"
            ) from error
        print(f"  {name}: skipped ({error})", flush=True)
        return None


def run_one(
    name: str, section: dict[str, Any], args: argparse.Namespace, actors: int | None, out: Path
) -> dict[str, Any] | None:
    from byzsgd import metrics
    from byzsgd.runner import run_experiment

    config = make_config(name, section, args, "ray", actors)
    if config is None:
        return None
    marks: dict[str, Any] = {}
    evaluating = {"cpu": 0.0}
    write = metrics.Monitor._write

    def timed_write(monitor: Any, step: int, models: dict[str, Any]) -> None:
        # The driver's evaluations of every correct server's model are the monitor's, not the
        # system's: excluded as in --runtime local (ByzSGD has 5 models to evaluate, vanilla 1).
        counting = "step0" in marks  # the step-0 row's evaluation precedes the window (on_row opens it)
        cpu = time.process_time()
        write(monitor, step, models)
        if counting:
            evaluating["cpu"] += time.process_time() - cpu

    def on_row(row: dict[str, Any]) -> None:
        if row["step"] == 0:
            marks["step0"] = cpu_snapshot()
        if row["step"] == config.steps:
            marks["end"] = cpu_snapshot()  # before the actors are killed

    before = cpu_snapshot()
    metrics.Monitor._write = timed_write
    try:
        result = run_experiment(config, out / name, on_row=on_row)
    finally:
        metrics.Monitor._write = write
    startup_cpu = cpu_used(before, marks["step0"])
    run_cpu = cpu_used(marks["step0"], marks["end"])
    run_cpu[os.getpid()] -= evaluating["cpu"]
    # The busiest node actor bounds steps/s where every node has a core of its own (a cluster).
    actor_cpu = [used for pid, used in run_cpu.items() if marks["end"][pid][0].startswith(b"ray::")]
    if args.processes:
        print(f"  {name}: CPU ms per step by process", flush=True)
        for pid, used in sorted(run_cpu.items(), key=lambda item: -item[1]):
            argv = marks["end"][pid][0].decode(errors="replace").split("\0")
            title = " ".join(os.path.basename(arg) for arg in argv[:2] if arg)
            print(f"    {1e3 * used / args.steps:8.1f}  {pid:>7d}  {title}", flush=True)
    rows, summary = result.rows, result.summary
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
        "messages_per_step": (rows[-1]["messages"] - rows[0]["messages"]) / args.steps,
        "copied_mb_per_step": (summary["put_bytes_per_step"] + summary["inline_bytes_per_step"]) / 1e6,
        "cross_node_mb_per_step": summary["cross_node_bytes_per_step"] / 1e6,
        "ray_nodes": len(set(summary["ray_nodes"].values())),
    }


def run_local(name: str, section: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any] | None:
    """One system in the in-process simulator: CPU and wall time per step from the step-0 row to
    the last, less the time the monitor spent evaluating models; payload bytes copied per step."""
    from byzsgd import metrics
    from byzsgd.protocols import base
    from byzsgd.runner import run_experiment

    config = make_config(name, section, args, "local", None)
    if config is None:
        return None
    spent = {"cpu": 0.0, "wall": 0.0}
    marks: dict[str, Any] = {}
    write = metrics.Monitor._write

    def timed_write(monitor: Any, step: int, models: dict[str, Any]) -> None:
        # The step-0 row's evaluation comes before the window opens (on_row opens it).
        counting = "start" in marks
        cpu, wall = time.process_time(), time.perf_counter()
        write(monitor, step, models)
        if counting:
            spent["cpu"] += time.process_time() - cpu
            spent["wall"] += time.perf_counter() - wall

    def on_row(row: dict[str, Any]) -> None:
        if row["step"] == 0:
            marks["start"] = (time.process_time(), time.perf_counter(), Counter(getattr(base, "copied_bytes", {})))
        if row["step"] == config.steps:
            marks["end"] = (time.process_time(), time.perf_counter(), Counter(getattr(base, "copied_bytes", {})))

    metrics.Monitor._write = timed_write
    try:
        started = time.perf_counter()
        result = run_experiment(config, out / name, on_row=on_row)
    finally:
        metrics.Monitor._write = write
    (cpu0, wall0, bytes0), (cpu1, wall1, bytes1) = marks["start"], marks["end"]
    cpu = cpu1 - cpu0 - spent["cpu"]
    wall = wall1 - wall0 - spent["wall"]
    rows = result.rows
    return {
        "system": name,
        "actors": None,
        "startup_s": marks["start"][1] - started,
        "startup_cpu_s": None,
        "steps_per_s": args.steps / wall,
        "cpu_ms_per_step": 1e3 * cpu / args.steps,
        "copied_mb_per_step": sum((bytes1 - bytes0).values()) / 1e6 / args.steps,
        "steps_to_target": None,
        "time_to_target_s": None,
        "final_acc": rows[-1]["test_acc"],
    }


def run_floor(name: str, section: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """The arithmetic of one step of `name`, in one process with no messages: the same gradients
    (one per worker, at the point the protocol evaluates them) and the same aggregations (on
    their inputs as the nodes pass them) and optimizer steps; ByzSGD's Gather every T steps. byzsgd-sync
    gets ByzSGD's arithmetic (its filters are not counted: a floor, not a model of it). On a GPU
    the parts are timed in wall time once the kernels are done (:func:`work_clock`)."""
    from byzsgd.aggregators import make_aggregator
    from byzsgd.optim import make_optimizer
    from byzsgd.protocols.base import aggregate_payloads
    from byzsgd.protocols.byzsgd import gather_period
    from byzsgd.training import Workload

    config = make_config(name, section, args, "local", None)
    if config is None:
        return None
    nodes = config.nodes
    workload = Workload(config)
    samplers = [workload.sampler(i) for i in range(nodes.n_w)]
    q_w = nodes.n_w - nodes.f_w
    aggregator = make_aggregator(config.aggregator.name, f=nodes.f_w, **config.aggregator.params)
    replicated = section["protocol"] != "ps"
    n_servers = nodes.n_ps if replicated else 1
    models = [workload.initial_vector() for _ in range(n_servers)]
    optimizers = [make_optimizer(config.optimizer) for _ in range(n_servers)]
    if replicated:
        q_ps = nodes.n_ps - nodes.f_ps
        model_rule = make_aggregator(config.options.model_rule, f=nodes.f_ps)
        period = gather_period(config)

    device = workload.device
    clock = work_clock(device)
    parts: Counter[str] = Counter()
    # Per node as well: the floor of the busiest node.
    per_node: Counter[str] = Counter()

    def timed(node: str, part: str, fn: Any, *args: Any) -> Any:
        began = clock()
        out = fn(*args)
        spent = clock() - began
        parts[part] += spent
        per_node[node] += spent
        return out

    def step(t: int) -> None:
        gradients = []
        for i, sampler in enumerate(samplers):
            worker = f"w{i}"
            if replicated:  # each worker takes its own median of the models it received
                point = timed(worker, "model rule", aggregate_payloads, model_rule, models[:q_ps], device)
            else:
                point = models[0]
            gradient = timed(worker, "gradients", workload.gradient, point, sampler.next())[0]
            if i < q_w:
                gradients.append(gradient)
        for s in range(n_servers):
            # Every correct server aggregates the same number of gradients.
            aggregate = timed(f"ps{s}", "aggregator", aggregate_payloads, aggregator, gradients, device)
            models[s] = timed(f"ps{s}", "optimizer", optimizers[s].step, models[s], aggregate)
        if replicated and (t + 1) % period == 0:
            models[:] = [
                timed(f"ps{s}", "model rule", aggregate_payloads, model_rule, models[:q_ps], device)
                for s in range(n_servers)
            ]

    step(0)  # warm up
    parts.clear()
    per_node.clear()
    began, wall = clock(), time.perf_counter()
    for t in range(1, args.steps + 1):
        step(t)
    total = clock() - began
    print(
        f"  floor:{name} {'CPU' if device.type == 'cpu' else 'GPU'} ms/step by part: "
        + ", ".join(f"{part} {1e3 * spent / args.steps:.1f}" for part, spent in parts.most_common()),
        flush=True,
    )
    return {
        "system": f"floor:{name}",
        "actors": None,
        "startup_s": None,
        "startup_cpu_s": None,
        "steps_per_s": args.steps / (time.perf_counter() - wall),
        "cpu_ms_per_step": 1e3 * total / args.steps,
        "busiest_actor_ms_per_step": 1e3 * busiest_node(per_node) / args.steps,
        "copied_mb_per_step": None,
        "cross_node_mb_per_step": None,
        "steps_to_target": None,
        "time_to_target_s": None,
        "final_acc": None,
    }


GPU_NOTE = (
    "On the GPU, CPU ms/step is the host's share only and a floor's is wall time (kernels done):\n"
    "compare steps/s."
)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def role_nodes(nodes: dict[str, int], roles: list[str]) -> int:
    """How many nodes ``roles`` count in a ``nodes`` section (workers: n_w, servers: n_ps)."""
    return sum(nodes["n_w"] if role == "workers" else nodes["n_ps"] for role in roles)


def gpu_share(gpus: int, actors: int) -> float:
    """Each of ``actors`` actors' equal share of ``gpus`` GPUs, as ``ray.num_gpus_per_actor``
    takes it. A fraction of a GPU never spans two, so ceil(actors / gpus) actors share each one;
    in Ray's resource precision (1e-4), rounded down so that they all fit."""
    return math.floor(1e4 / math.ceil(actors / gpus)) / 1e4


def work_clock(device: Any) -> Any:
    """What the floor's parts are timed with: this process's CPU time on the CPU; on a GPU, wall
    time once its queued kernels are done (CPU time would count only their launches)."""
    if device.type != "cuda":
        return time.process_time
    import torch

    def synchronized() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synchronized


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]]) -> None:
    """Each system on Ray, then each one's floor (its arithmetic in one process): for a floor,
    ``x vanilla`` compares it with vanilla's floor, the ratios if messages cost nothing."""
    bases = {r["system"].startswith("floor:"): r for r in results if r["system"].removeprefix("floor:") == "vanilla"}
    print(
        f"{'system':14s} {'actors':>6s} {'start s':>8s} {'start CPU s':>11s} "
        f"{'steps/s':>8s} {'range':>11s} {'x vanilla':>9s} "
        f"{'CPU ms/step':>11s} {'x vanilla':>9s} {'busiest ms':>10s} {'x vanilla':>9s} "
        f"{'steps→acc':>9s} {'s→acc':>7s} {'final acc':>9s} {'copied MB/step':>14s} {'cross-node MB/step':>18s}"
    )
    for r in results:
        floor = r["system"].startswith("floor:")
        base = bases.get(floor)
        speed = r["steps_per_s"] / base["steps_per_s"] if base and not floor else None
        cpu = base["cpu_ms_per_step"] / r["cpu_ms_per_step"] if base and r["cpu_ms_per_step"] else None
        busy = r["busiest_actor_ms_per_step"]
        node = base["busiest_actor_ms_per_step"] / busy if base and busy else None
        spread = "{:.1f}-{:.1f}".format(*r["steps_per_s_range"]) if not floor else "-"
        print(
            f"{r['system']:14s} {fmt(r['actors'], 'd'):>6s} {fmt(r['startup_s'], '8.1f'):>8s} "
            f"{fmt(r['startup_cpu_s'], '11.1f'):>11s} {fmt(None if floor else r['steps_per_s'], '8.2f'):>8s} "
            f"{spread:>11s} {fmt(speed, '.2f'):>9s} {r['cpu_ms_per_step']:11.1f} {fmt(cpu, '.2f'):>9s} "
            f"{busy:10.1f} {fmt(node, '.2f'):>9s} "
            f"{fmt(r['steps_to_target'], 'd'):>9s} {fmt(r['time_to_target_s'], '.1f'):>7s} "
            f"{fmt(r['final_acc'], '.3f'):>9s} {fmt(r['copied_mb_per_step'], '.1f'):>14s} "
            f"{fmt(r['cross_node_mb_per_step'], '.1f'):>18s}"
        )
    floors = {r["system"].removeprefix("floor:"): r for r in results if r["system"].startswith("floor:")}
    for r in results:
        floor = floors.get(r["system"])
        if floor and r.get("messages_per_step"):
            above = r["cpu_ms_per_step"] - floor["cpu_ms_per_step"]
            print(
                f"  {r['system']}: {r['messages_per_step']:.1f} messages per step; CPU above its floor "
                f"{above:.1f} ms per step, {above / r['messages_per_step']:.2f} ms per message"
            )


def start_cluster(args: argparse.Namespace) -> Any:
    """Ray for the benchmark: one local node, or ``--nodes`` raylets on this machine, each with
    its own object store (returns the Cluster to shut down, or None)."""
    import ray

    from byzsgd.config import RayConfig

    # byzsgd's own default unless told: what `byzsgd run` gets. (Ray's default, 30% of memory,
    # is never reused within a short run: every object lands on pages not yet touched.)
    store = args.store_mb * 1024 * 1024 if args.store_mb else RayConfig().object_store_memory
    if args.nodes == 1:
        ray.init(num_cpus=os.cpu_count(), object_store_memory=store, include_dashboard=False, log_to_driver=False)
        return None
    from ray.cluster_utils import Cluster

    # Every raylet offers all cores: the actors ask for fractions, and the K "machines" share this one.
    node = {"num_cpus": os.cpu_count(), "object_store_memory": store}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(**node)
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def print_local_table(results: list[dict[str, Any]]) -> None:
    """The in-process table: each system, then its floor; CPU as a multiple of vanilla's and of
    the floor's (lower is better), steps/s as a fraction of vanilla's (higher is better)."""
    base = next((r for r in results if r["system"] == "vanilla"), None)
    floors = {r["system"].removeprefix("floor:"): r for r in results if r["system"].startswith("floor:")}
    print(
        f"{'system':18s} {'steps/s':>8s} {'range':>11s} {'x vanilla':>9s} {'CPU ms/step':>11s} "
        f"{'CPU/vanilla':>11s} {'CPU/floor':>9s} {'copied MB/step':>14s} {'final acc':>9s}"
    )
    for r in results:
        floor = floors.get(r["system"])
        speed = r["steps_per_s"] / base["steps_per_s"] if base else None
        cost = r["cpu_ms_per_step"] / base["cpu_ms_per_step"] if base else None
        above = r["cpu_ms_per_step"] / floor["cpu_ms_per_step"] if floor else None
        spread = r.get("steps_per_s_range")
        print(
            f"{r['system']:18s} {r['steps_per_s']:8.2f} "
            f"{'{:.1f}-{:.1f}'.format(*spread) if spread else '-':>11s} {fmt(speed, '.2f'):>9s} "
            f"{r['cpu_ms_per_step']:11.1f} {fmt(cost, '.2f'):>11s} {fmt(above, '.2f'):>9s} "
            f"{fmt(r['copied_mb_per_step'], '.1f'):>14s} {fmt(r['final_acc'], '.3f'):>9s}"
        )


def busiest_node(per_node: Counter[str]) -> float:
    """The largest CPU time of one node."""
    return max(per_node.values(), default=0.0)


def median_run(runs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The run of median steps/s, with the spread of steps/s over the repeats."""
    done = sorted((r for r in runs if r), key=lambda r: r["steps_per_s"])
    if not done:
        return None
    row = done[len(done) // 2]
    row["steps_per_s_range"] = (done[0]["steps_per_s"], done[-1]["steps_per_s"])
    return row


def main_local(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)  # one thread: CPU time is the work, not thread hand-offs
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch)
        for name, section in systems(args.n_w, args.f_w, args.n_ps, args.f_ps).items():
            if args.only and name not in args.only:
                continue
            print(f"running {name} in process, {args.repeat}x, and its floor ...", flush=True)
            row = median_run([run_local(name, section, args, out / f"{name}-{i}") for i in range(args.repeat)])
            if row:
                rows.append(row)
                floor = median_run([run_floor(name, section, args) for _ in range(args.repeat)])
                if floor:
                    rows.append(floor)
    print(
        f"\n{args.workload}, runtime local (one thread), {args.n_w} workers, {args.steps} steps, no attack; "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    print_local_table(rows)
    print(
        "\nx vanilla: steps/s over vanilla's. CPU/vanilla and CPU/floor: CPU per step as a multiple of\n"
        "vanilla's and of the system's floor (its gradients and aggregations with no messaging), lower is\n"
        "better. copied MB/step: bytes written by to_payload and stack_payloads. Evaluations excluded."
    )
    if args.device == "cuda":
        print(GPU_NOTE)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits-mlp")
    parser.add_argument("--runtime", choices=["ray", "local"], default="ray")
    parser.add_argument("--cifar-root", help="folder holding cifar-10-batches-bin (cifar-resnet18 only)")
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
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where nodes compute; cuda on Ray: actors of --gpu-roles request --gpus-per-actor GPUs "
        "(floors on a GPU are timed in wall time, synchronized)",
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        help="ray.num_gpus_per_actor with --device cuda (default: this machine's GPUs shared equally "
        "among the nodes of --gpu-roles)",
    )
    parser.add_argument(
        "--gpu-roles",
        nargs="+",
        choices=["workers", "servers"],
        default=["workers", "servers"],
        help="ray.gpu_roles with --device cuda (default: both)",
    )
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
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes (raylets) to start on this machine")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="print each run's CPU per step for every process (actors show as ray::NodeActor)",
    )
    parser.add_argument(
        "--store-mb",
        type=int,
        help="object store per Ray node, MiB (default: byzsgd's ray.object_store_memory, 512)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes={args.nodes}: must be at least 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # the floors (and --runtime local) compute here
            parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device on this machine")
    try:
        if args.runtime == "local":
            return main_local(args)
        return main_ray(args)
    except WorkloadUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main_ray(args: argparse.Namespace) -> int:
    import ray

    # The floors first, in this process alone: one thread, as in --runtime local.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    floors = []
    for name, section in systems(args.n_w, args.f_w, args.n_ps, args.f_ps).items():
        if not args.only or name in args.only:
            print(f"floor of {name}, {args.repeat}x ...", flush=True)
            floors.append(median_run([run_floor(name, section, args) for _ in range(args.repeat)]))
    torch.set_num_threads(threads)
    started = time.perf_counter()
    cluster = start_cluster(args)
    print(
        f"ray start: {time.perf_counter() - started:.1f} s; {args.nodes} Ray node(s); {os.cpu_count()} cores; "
        f"load {os.getloadavg()[0]:.1f}"
    )
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
                    row = median_run([run_one(name, section, args, count, folder / str(i)) for i in range(args.repeat)])
                    if row:
                        rows.append(row)
                rows += [floor for floor in floors if floor]
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
    print(
        f"\n{args.workload}, {args.n_w} workers, {args.steps} steps, no attack, {args.nodes} Ray node(s); "
        f"time-to-accuracy at test_acc >= {args.target}; load average now {os.getloadavg()[0]:.1f}"
    )
    for actors, results in tables.items():
        spread = ", ".join(f"{r['system']} on {r['ray_nodes']}" for r in results if "ray_nodes" in r)
        print(f"\nray.actors: {'one per node' if actors == 'node' else actors}; Ray nodes used: {spread}")
        print_table(results)
    print(
        "\nx vanilla: steps/s ratio; vanilla's CPU per step (all processes) over the system's; and vanilla's\n"
        "busiest-actor CPU per step over the system's, the steps/s ratio to expect when every node has its\n"
        "own core (a cluster). All three: higher is better. floor: the same arithmetic in one process with\n"
        "no messages (busiest: the busiest node's share of it), its x vanilla against vanilla's floor: the\n"
        "ratios if messages cost nothing. copied MB/step: payload bytes put into the object store or\n"
        "serialized inline into calls; cross-node MB/step: payload bytes sent between Ray nodes (an object\n"
        "once per receiving node). Both as the runtime counts them, start-up included."
    )
    if args.device == "cuda":
        print(GPU_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
