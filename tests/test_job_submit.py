"""Running on a cluster: `ray job submit` against a real head on loopback, actor placement,
and the addresses a driver may join.

The test starts its own head (own ports, own temp dir, token authentication with its own
token, all in a subprocess environment), so it never touches the session ``ray_cluster`` or
any other Ray on the machine, and stops exactly the processes that head started: ``ray stop``
would stop every Ray on the machine, so the fixture ends its head's process tree by pid.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from byzsgd.experiment import load_config
from byzsgd.metrics import read_jsonl
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_pids(temp_dir: str) -> set[int]:
    """Processes of the Ray head rooted in ``temp_dir``: those naming it on their command line
    (GCS, raylet, dashboard, agents) and all their descendants (the workers, which rename
    themselves ``ray::...``)."""
    parents: dict[int, int] = {}
    roots = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if temp_dir in cmdline:
            roots.add(int(entry))
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    found.discard(os.getpid())
    return found


def stop_head(temp_dir: str) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = session_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while session_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with the dashboard (job API) on a free port; yields the
    environment (token auth on, same token) that a client of this head must use."""
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        # Ray 2.60 enables token auth by default; the head and every client need the same token.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    dashboard = free_port()
    command = [
        str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--port={free_port()}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        "--object-store-memory=200000000",
    ]  # fmt: skip
    try:
        for _attempt in range(2):  # `ray start` gives the raylet a fixed 30 s to register: a loaded machine may miss it
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
            if started.returncode == 0:
                break
            stop_head(temp_dir)
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(
    env: dict[str, str], address: str, working_dir: Path, entrypoint: list[str], env_vars: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [str(RAY), "job", "submit", f"--address={address}", f"--working-dir={working_dir}"]
    if env_vars:
        command.append(f"--runtime-env-json={json.dumps({'env_vars': env_vars})}")
    command += ["--", *entrypoint]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)


@pytest.mark.slow
def test_job_submit_runs_an_experiment_on_the_cluster_and_writes_its_results(ray_head, tmp_path):
    env, address = ray_head
    # The job's working dir: the package and an experiment file, as a user's checkout would hold.
    job_dir = tmp_path / "job"
    shutil.copytree(REPO / "byzsgd", job_dir / "byzsgd", ignore=shutil.ignore_patterns("__pycache__"))
    (job_dir / "tiny.yaml").write_text(
        "name: tiny\nruntime: ray\nsteps: 6\neval_every: 3\ndevice: cpu\n"
        "nodes: {n_ps: 2, f_ps: 0, n_w: 2, f_w: 0}\n"
        "data: {dataset: synthetic, batch_size: 16}\nmodel: {name: logreg}\noptimizer: {lr: 0.2}\n"
        "aggregator: {name: mda}\nattack: {name: none}\nserver_attack: {name: none}\n"
    )
    # A relative --out: inside a job it must not land in Ray's temporary copy of the working
    # directory (deleted with the job) but under $BYZSGD_JOB_ROOT (default ~), printed absolute.
    durable = tmp_path / "durable"
    # Inside the job RAY_ADDRESS points at the cluster, so the run joins it instead of starting a Ray.
    run = ["python", "-m", "byzsgd.cli", "run", "tiny.yaml", "--out", "results/tiny"]
    job = submit(env, address, job_dir, run, env_vars={"BYZSGD_JOB_ROOT": str(durable)})
    logs = job.stdout + job.stderr
    assert job.returncode == 0, logs
    assert "succeeded" in logs.lower(), logs
    printed = [line.split("results: ", 1)[1].strip() for line in logs.splitlines() if line.startswith("results: ")]
    assert printed == [str(durable / "results" / "tiny")], logs
    out = Path(printed[0])
    assert "results are on the Ray head" in logs
    # Off a terminal the job log holds one plain line per evaluated step, no progress-bar redraws.
    steps = [line for line in logs.splitlines() if line.startswith("[tiny] step ")]
    assert [line.split()[2] for line in steps] == ["0/6", "3/6", "6/6"], logs
    assert "\x1b[A" not in logs and not any("\r" in line for line in steps)
    # The job has ended; its results are still where it said.
    rows = read_jsonl(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 3, 6]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["runtime"] == "ray" and summary["actors"] == 4


@pytest.mark.slow
def test_job_submit_without_the_token_is_refused(ray_head, tmp_path):
    env, address = ray_head
    (tmp_path / "job").mkdir()
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    anonymous["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    job = submit(anonymous, address, tmp_path / "job", ["true"])
    assert job.returncode != 0
    assert "token" in (job.stdout + job.stderr).lower()


@pytest.mark.slow
def test_pack_placement_puts_every_actor_in_one_pack_group_and_removes_it(ray_cluster, tmp_path):
    config = make_config(
        runtime="ray",
        steps=4,
        eval_every=2,
        nodes={"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1},
        attack={"name": "signflip", "params": {"scale": 3.0}},
        ray={"placement": "pack"},
    )
    before = set(ray_cluster.util.placement_group_table())
    result = run_experiment(config, tmp_path / "run")
    groups = {k: v for k, v in ray_cluster.util.placement_group_table().items() if k not in before}
    assert result.summary["status"] == "finished"
    assert result.rows[-1]["byzantine_messages"] > 0  # the Byzantine worker attacked in its own process
    (group,) = groups.values()
    assert group["strategy"] == "PACK" and len(group["bundles"]) == 6  # one bundle per node actor
    assert group["state"] == "REMOVED"


def test_a_dashboard_address_is_refused_with_the_job_submit_command_to_use():
    with pytest.raises(
        ConfigError, match=r"ray\.address=http://head:8265: .*ray job submit --address http://head:8265"
    ):
        load_config(None, ["ray.address=http://head:8265"])
