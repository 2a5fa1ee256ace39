"""What a run leaves on disk when it dies: every row already written stays (the writer
flushes each one), a torn last line reads as absent, and summary.json says failed and keeps
the last row. Also: a sweep counts a run as finished only when its summary says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from byzsgd.runner import run_experiment
from tests.conftest import make_config
from tests.internal_api import METRICS_FILE, SUMMARY_FILE, read_jsonl, run_status

REPO = Path(__file__).resolve().parents[1]


class Boom(RuntimeError):
    pass


def test_every_row_is_on_disk_before_the_next_step_runs(tmp_path):
    """A separate reader sees each row as soon as the run hands it on: nothing waits in a buffer
    that a crash would lose."""
    run_dir = tmp_path / "run"
    on_disk: list[int] = []

    def check(row):
        on_disk.append(len((run_dir / METRICS_FILE).read_text().splitlines()))

    result = run_experiment(make_config(steps=40, eval_every=10), run_dir, on_row=check)
    assert [r["step"] for r in result.rows] == [0, 10, 20, 30, 40]
    assert on_disk == [1, 2, 3, 4, 5]


def test_a_run_that_raises_keeps_its_rows_and_says_failed_with_the_last_row(tmp_path):
    run_dir = tmp_path / "run"
    seen = []

    def fail_on_the_third(row):
        seen.append(row)
        if len(seen) == 3:
            raise Boom("node lost at the third evaluation")

    with pytest.raises(Boom):
        run_experiment(make_config(steps=60, eval_every=10), run_dir, on_row=fail_on_the_third)
    rows = read_jsonl(run_dir / METRICS_FILE)
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows == json.loads(json.dumps(seen))
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed"
    assert "Boom: node lost at the third evaluation" in summary["error"]
    assert summary["final"]["step"] == 20
    assert summary["final"]["test_acc"] == pytest.approx(rows[-1]["test_acc"])
    assert run_status(run_dir) == "failed"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_run_killed_mid_way_keeps_every_row_it_wrote(tmp_path):
    """SIGKILL runs no finally block and flushes no buffer: only what reached the OS survives."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from byzsgd.runner import run_experiment
        from tests.conftest import make_config
        rows = []
        def die(row):
            rows.append(row)
            if len(rows) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_experiment(make_config(steps=60, eval_every=10), {str(run_dir)!r}, on_row=die)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    rows = read_jsonl(run_dir / METRICS_FILE)
    assert [r["step"] for r in rows] == [0, 10]
    assert not (run_dir / SUMMARY_FILE).exists()
    assert run_status(run_dir) == "interrupted"


def test_a_torn_last_line_reads_as_absent(tmp_path):
    rows = [{"step": 10, "test_acc": 0.5}, {"step": 20, "test_acc": 0.75}]
    path = tmp_path / METRICS_FILE
    whole = "".join(json.dumps(r) + "\n" for r in rows)
    third = json.dumps({"step": 30, "test_acc": 0.875})
    for cut in [1, len(third) // 2, len(third) - 1]:
        path.write_text(whole + third[:cut])
        assert read_jsonl(path) == rows
    path.write_text(whole + third + "\n")
    assert read_jsonl(path)[-1]["step"] == 30
    path.write_text("")
    assert read_jsonl(path) == []


@pytest.mark.parametrize(
    "summary, status",
    [
        ({"name": "x", "final": {"step": 30}}, "failed"),  # no status: never counted as finished
        ({"name": "x", "status": "failed", "error": "RuntimeError: lost"}, "failed"),
        ({"name": "x", "status": "failed", "error": "KeyboardInterrupt"}, "interrupted"),
        ({"name": "x", "status": "finished"}, "finished"),
    ],
)
def test_a_sweep_counts_a_run_as_finished_only_when_its_summary_says_so(tmp_path, summary, status):
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    assert run_status(tmp_path) == status


def test_a_run_folder_without_a_summary_is_interrupted_or_pending(tmp_path):
    assert run_status(tmp_path) == "pending"
    (tmp_path / METRICS_FILE).write_text('{"step": 10}\n')
    assert run_status(tmp_path) == "interrupted"
    (tmp_path / SUMMARY_FILE).write_text('{"status": "fini')  # torn summary: as if absent
    assert run_status(tmp_path) == "interrupted"
