"""The results folder's reading and writing (byzsgd.results) and the metrics rows (byzsgd.metrics)."""

from __future__ import annotations

import json
import os
import re
import traceback
from types import SimpleNamespace

import numpy as np
import pytest

from byzsgd import results
from byzsgd.metrics import Monitor, diameter
from byzsgd.registry import ConfigError


def test_each_row_is_on_disk_as_soon_as_it_is_written(tmp_path):
    writer = results.metrics_writer(tmp_path)
    writer.write({"step": 1})
    assert results.read_metrics(tmp_path) == [{"step": 1}]  # read before close: flushed per row
    writer.write({"step": 2})
    assert results.read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    writer.close()


def test_rows_stop_at_the_first_that_is_not_an_object_or_not_utf8(tmp_path):
    path = tmp_path / results.METRICS_FILE
    assert results.read_jsonl(path) == []  # missing file: no rows
    path.write_bytes(b'{"step": 1}\n[2]\n{"step": 3}\n')
    assert results.read_jsonl(path) == [{"step": 1}]
    path.write_bytes(b'{"step": 1}\n"\xff"\n{"step": 3}\n')
    assert results.read_jsonl(path) == [{"step": 1}]


def test_a_run_folder_needs_both_its_config_and_its_metrics(tmp_path):
    assert not results.is_run_dir(tmp_path)
    (tmp_path / results.CONFIG_FILE).write_text("name: x\n")
    assert not results.is_run_dir(tmp_path)
    (tmp_path / results.METRICS_FILE).write_text("")
    assert results.is_run_dir(tmp_path)


def test_clear_run_removes_the_run_files_and_a_folder_in_their_place_and_nothing_else(tmp_path):
    for name in (*results.RUN_FILES, results.RUN_INFO_FILE, "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / results.METRICS_FILE).unlink()
    (tmp_path / results.METRICS_FILE).mkdir()
    (tmp_path / results.METRICS_FILE / "inner").write_text("x")
    kept = tmp_path.parent / f"{tmp_path.name}-target"
    kept.mkdir()
    (kept / "precious").write_text("keep")
    (tmp_path / results.SUMMARY_FILE).unlink()
    (tmp_path / results.SUMMARY_FILE).symlink_to(kept, target_is_directory=True)
    results.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (kept / "precious").read_text() == "keep"  # the link is removed, not what it points to
    results.clear_run(tmp_path)  # nothing left to remove: no error


def test_claim_refuses_a_folder_holding_a_run_and_names_its_files(tmp_path):
    (tmp_path / results.CONFIG_FILE).write_text("x")
    (tmp_path / results.SUMMARY_FILE).write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml, summary.json\); pass --overwrite"):
        results.claim_run_dir(tmp_path)
    assert (tmp_path / results.CONFIG_FILE).exists()  # nothing touched
    results.claim_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    results.claim_run_dir(tmp_path)  # now free
    results.claim_run_dir(tmp_path / "new" / "deeper")  # not there yet: created later


def test_claim_refuses_a_file_and_a_folder_in_place_of_a_run_file(tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"^results folder '.*f': exists and is not a folder$"):
        results.claim_run_dir(file)
    with pytest.raises(ConfigError, match=rf"^results folder '{re.escape(str(file / 'below'))}': cannot be created"):
        results.claim_run_dir(file / "below")
    file.chmod(0o700)  # writable and executable, still not a folder
    with pytest.raises(ConfigError, match=r"cannot be created or written in '.*f'$"):
        results.claim_run_dir(file / "below")
    (tmp_path / results.CONFIG_FILE).write_text("x")
    (tmp_path / results.METRICS_FILE).mkdir()
    with pytest.raises(
        ConfigError,
        match=rf"^results folder '{re.escape(str(tmp_path))}': metrics.jsonl is a folder, not a file; remove it",
    ):
        results.claim_run_dir(tmp_path, overwrite=True)
    assert (tmp_path / results.CONFIG_FILE).exists()  # checked before anything is removed


def test_claim_asks_for_write_and_search_permission_where_the_folder_goes(tmp_path, monkeypatch):
    # As for a user without write permission there (root writes anywhere, so the OS is asked through a stand-in).
    monkeypatch.setattr(results.os, "access", lambda path, mode: not mode & os.W_OK)
    with pytest.raises(ConfigError, match=rf"cannot be created or written in '{re.escape(str(tmp_path))}'"):
        results.claim_run_dir(tmp_path / "run")


def test_claim_names_the_folder_that_already_holds_a_run(tmp_path):
    (tmp_path / results.SUMMARY_FILE).write_text("{}")
    expected = rf"^results folder '{re.escape(str(tmp_path))}' already holds a run \(summary.json\)"
    with pytest.raises(ConfigError, match=expected):
        results.claim_run_dir(tmp_path)


def test_claim_refuses_a_folder_it_cannot_write_in(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who writes anywhere")
        with pytest.raises(ConfigError, match=r"cannot be created or written in '.*locked'"):
            results.claim_run_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def boom() -> BaseException:
    try:
        raise RuntimeError("lost the data")
    except RuntimeError as error:
        return error


def test_a_failure_keeps_its_traceback_and_a_failed_summary(tmp_path):
    run_dir = tmp_path / "sweep" / "run"  # neither exists yet
    error = boom()
    error.add_note("while loading shard 3")
    path = results.record_failure(run_dir, "exp", error)
    assert path == run_dir / results.TRACEBACK_FILE
    assert path.read_text() == "".join(traceback.format_exception(error))
    assert path.read_text().startswith("Traceback (most recent call last):\n")
    summary = json.loads((run_dir / results.SUMMARY_FILE).read_text())
    assert summary == {"name": "exp", "status": "failed", "error": "RuntimeError: lost the data\nwhile loading shard 3"}
    assert results.run_status(run_dir) == "failed"


def test_a_failure_keeps_the_runners_failed_summary_and_replaces_any_other(tmp_path):
    runner_summary = {"name": "exp", "status": "failed", "error": "RuntimeError: x", "final": {"step": 3}}
    (tmp_path / results.SUMMARY_FILE).write_text(json.dumps(runner_summary))
    results.record_failure(tmp_path, "exp", boom())
    assert json.loads((tmp_path / results.SUMMARY_FILE).read_text()) == runner_summary
    for stale in ('{"name": "exp", "status": "finished"}', "[1]", "torn {"):
        (tmp_path / results.SUMMARY_FILE).write_text(stale)
        results.record_failure(tmp_path, "exp", boom())
        assert json.loads((tmp_path / results.SUMMARY_FILE).read_text())["status"] == "failed"


def test_a_config_that_is_missing_or_not_a_mapping_reads_empty(tmp_path):
    assert results.read_config(tmp_path) == {}
    (tmp_path / results.CONFIG_FILE).write_text("- a\n- b\n")
    assert results.read_config(tmp_path) == {}
    (tmp_path / results.CONFIG_FILE).write_text("a: [\n")
    assert results.read_config(tmp_path) == {}
    (tmp_path / results.CONFIG_FILE).write_text("name: x\nsteps: 3\n")
    assert results.read_config(tmp_path) == {"name": "x", "steps": 3}


def test_run_info_and_summary_read_back_as_written(tmp_path):
    assert results.read_run_info(tmp_path) == {}
    results.write_run_info(tmp_path, {"label": "seed=1", "path": tmp_path})
    assert results.read_run_info(tmp_path) == {"label": "seed=1", "path": str(tmp_path)}
    results.write_summary(tmp_path, {"status": "finished", "final": {"step": 2}})
    assert results.read_summary(tmp_path) == {"status": "finished", "final": {"step": 2}}
    (tmp_path / results.RUN_INFO_FILE).write_text("[1]")
    assert results.read_run_info(tmp_path) == {}
    (tmp_path / results.RUN_INFO_FILE).write_bytes(b"\xff")
    assert results.read_run_info(tmp_path) == {}


@pytest.mark.parametrize("summary", [{"status": 1}, {"status": "finished", "final": [1]}, {"final": "x"}])
def test_a_summary_a_run_does_not_write_reads_as_absent(tmp_path, summary):
    (tmp_path / results.SUMMARY_FILE).write_text(json.dumps(summary))
    assert results.read_summary(tmp_path) is None
    assert results.run_status(tmp_path) == "pending"


def test_a_finished_run_with_a_folder_in_place_of_its_files_is_corrupt(tmp_path):
    results.write_summary(tmp_path, {"status": "finished"})
    (tmp_path / results.CONFIG_FILE).write_text("x")
    assert results.run_status(tmp_path) == "finished"
    (tmp_path / results.METRICS_FILE).mkdir()
    assert results.run_status(tmp_path) == "corrupt"
    results.write_summary(tmp_path, {"status": "failed", "error": "RuntimeError: x"})
    assert results.run_status(tmp_path) == "failed"


@pytest.mark.parametrize(
    "error, stopped",
    [
        ("KeyboardInterrupt", True),
        ("builtins.KeyboardInterrupt: ", True),
        ("byzsgd.sweep.SweepTerminated: signal 15", True),
        ("Terminated: by SIGTERM", True),
        ("RuntimeError: KeyboardInterrupt", False),
        ("KeyboardInterruptX: y", False),
        ("", False),
        ("KeyboardInterrupt: stopped: at step 3", True),
    ],
)
def test_only_an_interruption_named_as_the_error_class_counts(error, stopped):
    assert results.interrupted(error) is stopped


def test_a_new_run_folder_is_named_after_the_experiment_under_its_output(tmp_path):
    config = SimpleNamespace(name="exp", output_dir=str(tmp_path))
    first = results.new_run_dir(config)
    assert first.parent == tmp_path and re.fullmatch(r"exp-\d{8}-\d{6}-\d{6}", first.name)
    assert first != results.new_run_dir(config)  # microseconds in the stamp


class FakeWorkload:
    """Evaluates a model to its first coordinate as accuracy, the second as test loss, the third as train loss."""

    device = "cpu"

    def evaluate(self, vector):
        return {"test_acc": float(vector[0]), "test_loss": float(vector[1]), "train_loss": float(vector[2])}


def test_diameter_is_the_largest_pairwise_distance():
    assert diameter(np.zeros((1, 3))) == 0.0
    assert diameter(np.zeros((0, 3))) == 0.0
    points = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert diameter(points) == pytest.approx(5.0)
    assert diameter(points[:2]) == pytest.approx(5.0)


def test_a_row_is_written_once_every_correct_server_reported_its_step(tmp_path):
    rows = []
    writer = results.metrics_writer(tmp_path)
    monitor = Monitor(FakeWorkload(), ["s0", "s1"], steps=2, writer=writer, on_row=rows.append)
    monitor.counters = lambda: {"messages": 7}
    monitor.report("byz", 1, np.array([9.0, 9.0, 9.0]))  # not a correct server: ignored
    monitor.report("s0", 1, np.array([0.5, 1.0, 2.0]))
    assert monitor.rows == [] and not monitor.done
    monitor.report("s0", 2, np.array([1.0, 0.0, float("nan")]))  # step 2 waits for step 1 to complete
    monitor.report("s1", 1, np.array([0.25, 3.0, 4.0]))
    assert [r["step"] for r in monitor.rows] == [1] and not monitor.done
    row = monitor.rows[0]
    assert row["test_acc"] == pytest.approx(0.375)
    assert (row["test_acc_min"], row["test_acc_max"]) == (0.25, 0.5)
    assert row["test_loss"] == pytest.approx(2.0)
    assert row["train_loss"] == pytest.approx(3.0)
    assert row["diameter"] == pytest.approx(np.linalg.norm([0.25, 2.0, 2.0]))
    assert row["test_acc_per_server"] == {"s0": 0.5, "s1": 0.25}
    assert row["messages"] == 7
    assert row["steps_per_s"] > 0 and row["time_s"] >= 0
    assert results.read_metrics(tmp_path) == [row] and rows == [row]
    monitor.drop_server("s1")  # crashed: step 2 no longer waits for it
    assert [r["step"] for r in monitor.rows] == [1, 2] and monitor.done
    assert monitor.live_servers == ["s0"]
    assert monitor.rows[1]["diameter"] == 0.0
    assert monitor.rows[1]["train_loss"] is None  # not finite: null in JSON
    writer.close()


def test_no_row_is_written_once_every_server_dropped():
    monitor = Monitor(FakeWorkload(), ["s0"], steps=1)
    monitor.drop_server("s0")
    monitor.report("s0", 1, np.array([1.0, 0.0, 0.0]))
    assert monitor.rows == [] and not monitor.done


def test_a_row_rounds_its_times_and_accuracies_as_documented(monkeypatch):
    monitor = Monitor(FakeWorkload(), ["s0"], steps=5)  # counters left at their default: none
    monitor.started = 0.0
    monkeypatch.setattr("byzsgd.metrics.time.perf_counter", lambda: 2.123456)
    monitor.report("s0", 0, np.array([0.123456, 0.0, 0.0]))
    monitor.report("s0", 1, np.array([0.5, 0.0, 0.0]))
    first, second = monitor.rows
    assert first["steps_per_s"] == 0.0  # step 0: no step done yet
    assert second["time_s"] == 2.1235 and second["steps_per_s"] == 0.471
    assert first["test_acc_per_server"] == {"s0": 0.1235}
    assert set(first) == {
        "step", "time_s", "steps_per_s", "test_acc", "test_acc_min", "test_acc_max",
        "test_loss", "train_loss", "diameter", "test_acc_per_server",
    }  # fmt: skip


def test_diameter_of_integer_and_single_precision_points_is_computed_in_double():
    assert diameter(np.array([[0, 0], [3, 4]])) == 5.0
    points = np.array([[0.1, 0.2], [0.3, 0.7]], dtype=np.float32)
    exact = float(np.linalg.norm(points[0].astype(np.float64) - points[1].astype(np.float64)))
    assert diameter(points) == pytest.approx(exact, rel=1e-12)


def test_a_written_config_keeps_the_fields_in_their_order(tmp_path):
    results.write_config(tmp_path, SimpleNamespace(to_dict=lambda: {"name": "x", "steps": 3, "aggregator": "mda"}))
    assert [line.split(":")[0] for line in (tmp_path / results.CONFIG_FILE).read_text().splitlines()] == [
        "name",
        "steps",
        "aggregator",
    ]
    assert results.metrics_writer(tmp_path).path == tmp_path / results.METRICS_FILE
