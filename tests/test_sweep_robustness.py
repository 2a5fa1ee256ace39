"""A sweep survives what it finds on disk and dies with its processes: a corrupt run folder is
run again (never fatal), two sweeps never work in one folder, and a sweep killed with SIGTERM
or SIGKILL leaves no process behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from byzsgd.registry import ConfigError
from byzsgd.results import read_config, read_jsonl, read_run_info, read_summary
from byzsgd.sweep import expand_sweep, plan_text, run_status, run_sweep
from byzsgd.sweep.execute import sweep_lock
from byzsgd.sweep.state import results_rows
from tests.test_sweep import CountingRunner, base, read_table, results_of

REPO = Path(__file__).resolve().parents[1]


def corrupt_list_summary(run_dir):
    (run_dir / "summary.json").write_text("[1, 2, 3]")


def corrupt_final(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | {"final": [0.9]}))


def corrupt_status(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | {"status": ["finished"]}))


def corrupt_utf8_summary(run_dir):
    (run_dir / "summary.json").write_bytes(b'{"status": "finished", "name": "\xff\xfe"}')


def folder_for_summary(run_dir):
    (run_dir / "summary.json").unlink()
    (run_dir / "summary.json").mkdir()
    (run_dir / "summary.json" / "x").write_text("x")


def folder_for_metrics(run_dir):  # the summary still says finished
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").mkdir()


def folder_for_config(run_dir):
    (run_dir / "config.yaml").unlink()
    (run_dir / "config.yaml").mkdir()


def file_for_run_folder(run_dir):
    for path in run_dir.iterdir():
        path.unlink()
    run_dir.rmdir()
    run_dir.write_text("not a folder")


CORRUPTIONS = [
    corrupt_list_summary,
    corrupt_final,
    corrupt_status,
    corrupt_utf8_summary,
    folder_for_summary,
    folder_for_metrics,
    folder_for_config,
    file_for_run_folder,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda c: c.__name__)
def test_a_corrupt_run_folder_is_run_again(tmp_path, monkeypatch, corrupt):
    plan = expand_sweep(base(sweep={"grid": {"seed": [0, 1]}}), out_dir=tmp_path / "sweep")
    run_sweep(plan, quiet=True)
    broken, intact = (plan.out_dir / r.run_id for r in plan.runs)
    expected = results_of(broken)
    corrupt(broken)
    assert run_status(broken) in ("corrupt", "interrupted", "pending")
    assert broken.name in plan_text(plan)  # reading the sweep's state never raises
    assert [row["status"] for row in results_rows(plan)] == [run_status(broken), "finished"]

    runner = CountingRunner(monkeypatch)
    outcome = run_sweep(plan, quiet=True)
    assert runner.calls == [broken.name] and outcome.skipped == [intact.name] and not outcome.failed
    assert run_status(broken) == "finished" and results_of(broken) == expected
    assert [r["step"] for r in read_jsonl(broken / "metrics.jsonl")] == [0, 2, 4]
    assert [row["status"] for row in read_table(plan.out_dir / "results.csv")] == ["finished"] * 2


def test_readers_return_nothing_for_corrupt_files(tmp_path):
    (tmp_path / "summary.json").write_bytes(b"\xff")
    (tmp_path / "sweep_run.json").write_text('["label"]')
    (tmp_path / "config.yaml").write_bytes(b"a: \xff\n")
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 0}\n[1]\n{"step": 2}\n')
    assert read_summary(tmp_path) is None and run_status(tmp_path) == "interrupted"  # as if absent
    assert read_run_info(tmp_path) == {}
    assert read_config(tmp_path) == {}
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 0}]  # up to the first row that is not an object
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 0}\n{"step": "\xff"}\n')
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 0}]


def test_a_run_whose_folder_cannot_be_written_fails_and_the_sweep_goes_on(tmp_path, monkeypatch):
    plan = expand_sweep(base(sweep={"grid": {"seed": [0, 1]}}), out_dir=tmp_path / "sweep")
    blocked = plan.out_dir / plan.runs[0].run_id
    blocked.mkdir(parents=True)
    (blocked / "summary.json").mkdir()
    monkeypatch.setattr("byzsgd.results.shutil.rmtree", lambda path: (_ for _ in ()).throw(PermissionError(13, "no")))
    outcome = run_sweep(plan, quiet=True)
    assert list(outcome.failed) == [blocked.name] and "PermissionError" in outcome.failed[blocked.name]
    assert run_status(plan.out_dir / plan.runs[1].run_id) == "finished"


def test_two_sweeps_never_work_in_one_folder(tmp_path):
    plan = expand_sweep(base(sweep={"grid": {"seed": [0]}}), out_dir=tmp_path / "sweep")
    with sweep_lock(plan.out_dir):
        with pytest.raises(ConfigError, match=f"another sweep is running in this folder \\(pid {os.getpid()}\\)"):
            run_sweep(plan, quiet=True)
    assert run_sweep(plan, quiet=True).executed == [plan.runs[0].run_id]  # the lock went with its holder


# --- killed sweeps --------------------------------------------------------------------------


def children(pid):
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_long_sweep(tmp_path):
    """A sweep of 4 long runs, 2 at a time; returns it once both pool processes are running one."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base(steps=100000, eval_every=1, sweep={"grid": {"seed": [0, 1, 2, 3]}})))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("w") as stderr:  # a file, not a pipe: a leftover process cannot block it
        sweep = subprocess.Popen(
            [sys.executable, "-m", "byzsgd.cli", "sweep", str(path), "--out", str(out), "--parallel", "2", "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweep.poll() is None:
        started = [d for d in out.glob("*/metrics.jsonl") if d.stat().st_size > 0] if out.exists() else []
        if len(started) == 2:
            return sweep, out, children(sweep.pid)
        time.sleep(0.3)
    sweep.kill()
    raise AssertionError(f"the sweep did not start two runs: {(tmp_path / 'stderr.txt').read_text()}")


@pytest.fixture
def leftovers():
    """Processes a failing test must not leave running."""
    pids = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.mark.slow
def test_a_sweep_killed_with_sigterm_stops_its_processes_and_records_its_runs(tmp_path, leftovers):
    sweep, out, pool = start_long_sweep(tmp_path)
    leftovers.extend(pool)
    assert len(pool) >= 2
    sweep.send_signal(signal.SIGTERM)
    sweep.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert sweep.returncode == 143, err
    assert "sweep terminated (SIGTERM); rerun the same command to resume" in err
    assert "Traceback" not in err
    assert wait_gone(pool, 10) == []
    statuses = sorted(run_status(d) for d in out.iterdir() if d.is_dir())
    assert statuses == ["interrupted", "interrupted"]  # the two running runs; the two queued never started
    rows = read_table(out / "results.csv")
    assert sorted(row["status"] for row in rows) == ["interrupted", "interrupted", "pending", "pending"]


@pytest.mark.slow
def test_pool_processes_stop_when_the_sweep_is_killed_outright(tmp_path, leftovers):
    sweep, out, pool = start_long_sweep(tmp_path)
    leftovers.extend(pool)
    sweep.kill()  # SIGKILL: no handler runs in the sweep
    sweep.wait(timeout=30)
    assert wait_gone(pool, 30) == []
    assert sorted(run_status(d) for d in out.iterdir() if d.is_dir()) == ["interrupted", "interrupted"]


def test_a_finished_summary_with_a_folder_for_its_metrics_is_corrupt(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "finished", "final": {"step": 4}}')
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "metrics.jsonl").mkdir()
    assert run_status(tmp_path) == "corrupt"
    (tmp_path / "metrics.jsonl").rmdir()
    (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n')
    assert run_status(tmp_path) == "finished"
