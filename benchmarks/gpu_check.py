"""The GPU check: byzsgd trains on a GPU, in process and on Ray actors, and what it costs there.

One short script for a machine with an NVIDIA GPU (CI never has one: the CPU suite covers the
GPU paths with the device string only). Each check prints PASS or FAIL with what it saw:

1. the suite's CUDA tests (every aggregation rule on CUDA tensors against the CPU);
2. in process (``runtime: local``, ``device: cuda``): ByzSGD on ``mnist-wide`` (d = 1.63M)
   trains on the GPU: ``summary.json`` says ``cuda``, and test accuracy rises;
3. on Ray, when Ray is installed, this machine's GPUs shared equally among the actors of
   ``ray.gpu_roles`` (``ray.num_gpus_per_actor``: 1/12 of one GPU for 5 servers and 7
   workers): with ``gpu_roles: [workers, servers]`` every node reports ``cuda:0`` in
   ``summary.json``'s ``devices``; with ``[workers]`` the workers do and the servers stay on
   the CPU.

Then the figures (skipped with ``--checks-only``): ``benchmarks/overhead.py --device cuda`` for
vanilla and ByzSGD on ``mnist-wide`` and ``cifar-resnet18``, in process and on Ray.

    python benchmarks/gpu_check.py                 # checks, then figures
    python benchmarks/gpu_check.py --checks-only   # the checks alone
    python benchmarks/gpu_check.py --dry-run       # the same checks on the CPU, no GPU requested

``--dry-run`` runs checks 2 and 3 on the CPU (``device: cpu``, no GPUs requested, every node
expected on ``cpu``): the script's own plumbing, which the test suite runs without a GPU.

Exit status: 0 when every check passed, 1 when one failed, 2 when torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.overhead import gpu_count, gpu_share, role_nodes  # noqa: E402  (after the path)

# ByzSGD at a size where the GPU matters: n_ps = 5 (f_ps = 1), n_w = 7 (f_w = 2), as overhead.py.
WORKLOAD = {"data": {"dataset": "mnist5k", "batch_size": 32}, "model": {"name": "mlp", "hidden": 2048}}
BYZSGD = {
    "protocol": "byzsgd",
    "aggregator": {"name": "mda"},
    "nodes": {"n_ps": 5, "f_ps": 1, "n_w": 7, "f_w": 2},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "attack": {"name": "none"},
    "server_attack": {"name": "none"},
    **WORKLOAD,
}


def check_cuda_tests() -> str | None:
    """The suite's CUDA tests; None when they pass, else what failed."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_aggregators.py", "-k", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    if done.returncode != 0 or "skipped" in last or "passed" not in last:
        return f"pytest: {last}"
    print(f"    {last}")
    return None


def run(settings: dict[str, Any], folder: Path) -> Any:
    import byzsgd

    return byzsgd.run({**BYZSGD, **settings}, run_dir=folder)


def check_in_process(folder: Path, steps: int, gpu: bool) -> str | None:
    wanted = "cuda" if gpu else "cpu"
    out = run({"runtime": "local", "device": wanted, "steps": steps, "eval_every": steps}, folder)
    device, first, last = out.summary["device"], out.rows[0]["test_acc"], out.rows[-1]["test_acc"]
    print(f"    device {device}; test accuracy {first:.3f} -> {last:.3f} after {steps} steps")
    if device.split(":")[0] != wanted:
        return f"summary.json says device {device!r}, not {wanted}"
    return None if last > first + 0.2 else f"test accuracy did not rise: {first:.3f} -> {last:.3f}"


def check_on_ray(folder: Path, steps: int, roles: list[str], gpu: bool) -> str | None:
    """Every node of ``roles`` on the GPU Ray assigned its actor (this machine's GPUs shared
    equally among them), every other node on the CPU."""
    share = gpu_share(gpu_count(), role_nodes(BYZSGD["nodes"], roles)) if gpu else 0.0
    ray_settings = {"num_gpus_per_actor": share, "gpu_roles": roles}
    settings = {"runtime": "ray", "device": "auto" if gpu else "cpu", "steps": steps, "eval_every": steps}
    out = run({**settings, "ray": ray_settings}, folder)
    devices: dict[str, str] = out.summary["devices"]
    print(f"    devices {devices}; final test accuracy {out.rows[-1]['test_acc']:.3f}")
    wanted = {node: "cuda:0" if gpu and role_of(node) in roles else "cpu" for node in devices}
    wrong = {node: device for node, device in devices.items() if device != wanted[node]}
    return f"nodes on the wrong device: {wrong} (wanted {wanted})" if wrong else None


def role_of(node: str) -> str:
    return "workers" if node.startswith("w") else "servers"


def figures(workload: str, steps: int, runtime: str) -> None:
    command = [
        sys.executable,
        "benchmarks/overhead.py",
        "--device",
        "cuda",
        "--runtime",
        runtime,
        "--workload",
        workload,
        "--steps",
        str(steps),
        "--repeat",
        "1",
        "--only",
        "vanilla",
        "byzsgd",
    ]
    if runtime == "ray":
        command += ["--actors", "node"]
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks-only", action="store_true", help="skip the figures")
    parser.add_argument("--steps", type=int, default=60, help="steps of the in-process check's training run")
    parser.add_argument("--dry-run", action="store_true", help="checks 2 and 3 on the CPU; no figures")
    args = parser.parse_args(argv)
    gpu = not args.dry_run

    import torch

    if gpu and not torch.cuda.is_available():
        print(
            f"gpu_check: torch {torch.__version__} sees no CUDA device: nothing to check here "
            "(run it on a machine with an NVIDIA GPU)",
            file=sys.stderr,
        )
        return 2
    if gpu:
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}", flush=True)
    try:
        import ray
    except ImportError:
        ray = None

    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        where = "the GPU" if gpu else "the CPU (dry run)"
        checks: list[tuple[str, Callable[[], str | None]]] = []
        if gpu:
            checks.append(("CUDA tests of the suite", check_cuda_tests))
        local = Path(scratch, "local")
        checks.append((f"ByzSGD in process on {where}", lambda: check_in_process(local, args.steps, gpu)))
        if ray is not None:
            for roles in (["workers", "servers"], ["workers"]):
                folder = Path(scratch, "ray-" + "-".join(roles))
                checks.append(
                    (
                        f"ByzSGD on Ray, {where}, GPU roles: {' and '.join(roles)}",
                        lambda f=folder, r=roles: check_on_ray(f, 20, r, gpu),
                    )
                )
        for title, check in checks:
            print(f"{title} ...", flush=True)
            try:
                problem = check()
            except Exception as error:  # a check that crashes has failed: say how, run the others
                problem = f"{type(error).__name__}: {error}"
            failures += problem is not None
            print(f"  {'FAIL: ' + problem if problem else 'PASS'}", flush=True)
    if ray is None:
        print("Ray is not installed: the checks on Ray actors did not run", flush=True)
    if gpu and not args.checks_only:
        for workload, steps in (("mnist-wide", 30), ("cifar-resnet18", 10)):
            for runtime in ("local", "ray") if ray is not None else ("local",):
                figures(workload, steps, runtime)
    print(f"\ngpu_check: {len(checks) - failures} of {len(checks)} checks passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
