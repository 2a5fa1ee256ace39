"""Sweeps: expansion, run ids, results table, failures, and resuming an interrupted sweep."""

import csv
import json

import pytest
import yaml

import byzsgd.runner
from byzsgd.cli import main
from byzsgd.experiment import config_from_dict
from byzsgd.metrics import read_jsonl
from byzsgd.registry import ConfigError
from byzsgd.sweep import config_hash, expand_sweep, run_status, run_sweep


def base(**changes):
    """A tiny, fast experiment (2 servers, 4 workers, synthetic data, 4 steps)."""
    data = {
        "name": "tiny",
        "runtime": "local",
        "steps": 4,
        "eval_every": 2,
        "device": "cpu",
        "nodes": {"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1},
        "data": {"dataset": "synthetic", "batch_size": 16},
        "model": {"name": "logreg"},
        "optimizer": {"lr": 0.2},
        "attack": {"name": "signflip"},
        "server_attack": {"name": "none"},
    }
    data.update(changes)
    return data


def results_of(run_dir):
    """The final metrics of a run without its timings (the only thing a rerun may change)."""
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    return {k: v for k, v in final.items() if k not in ("time_s", "steps_per_s")}


def read_table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class CountingRunner:
    """Wraps the real run_experiment: records which runs executed, optionally fails some."""

    def __init__(self, monkeypatch, fail_seed=None, interrupt_seed=None):
        self.real = byzsgd.runner.run_experiment
        self.calls = []
        self.fail_seed = fail_seed
        self.interrupt_seed = interrupt_seed
        monkeypatch.setattr(byzsgd.runner, "run_experiment", self)

    def __call__(self, config, run_dir=None, on_row=None):
        self.calls.append(run_dir.name)
        if config.seed == self.fail_seed:
            raise RuntimeError(f"boom in seed {config.seed}")
        if config.seed == self.interrupt_seed:

            def stop(row):
                raise KeyboardInterrupt

            return self.real(config, run_dir, on_row=stop)
        return self.real(config, run_dir, on_row=on_row)


# --- expansion ----------------------------------------------------------------------------


def test_grid_times_variants_is_the_cartesian_product_with_variants_applied_last(tmp_path):
    sweep = {
        "grid": {"attack.name": ["signflip", "gaussian"], "seed": [0, 1]},
        "variants": [{"label": "mda"}, {"label": "median", "aggregator.name": "median", "optimizer.lr": 0.05}],
    }
    plan = expand_sweep(base(sweep=sweep), out_dir=tmp_path)
    got = {
        (r.label, r.config.attack.name, r.config.seed, r.config.aggregator.name, r.config.optimizer.lr)
        for r in plan.runs
    }
    expected = {
        (label, attack, seed, rule, lr)
        for label, rule, lr in [("mda", "mda", 0.2), ("median", "median", 0.05)]
        for attack in ["signflip", "gaussian"]
        for seed in [0, 1]
    }
    assert got == expected and len(plan.runs) == 8
    assert plan.swept_keys == ["attack.name", "seed", "aggregator.name", "optimizer.lr"]
    assert len({r.run_id for r in plan.runs}) == 8
    assert all(r.run_id.startswith(r.label) for r in plan.runs)
    # the base config is untouched by the expansion: keys no one sweeps keep their base value
    assert {r.config.steps for r in plan.runs} == {4}


def test_a_mapping_value_replaces_the_whole_section():
    sweep = {"grid": {"attack": [{"name": "gaussian", "params": {"std": 5.0}}, {"name": "nan"}]}}
    plan = expand_sweep(base(attack={"name": "signflip", "params": {"scale": 3.0}}, sweep=sweep), out_dir="x")
    assert [(r.config.attack.name, r.config.attack.params) for r in plan.runs] == [
        ("gaussian", {"std": 5.0}),
        ("nan", {}),  # signflip's scale would be an unknown parameter of nan
    ]


def test_a_base_shared_by_several_protocols_gives_each_run_its_own_options_section():
    sweep = {"variants": [{"label": "async", "protocol": "byzsgd"}, {"label": "sync", "protocol": "byzsgd-sync"}]}
    plan = expand_sweep(base(byzsgd={"period": 3}, sweep=sweep), out_dir="x")
    by_label = {r.label: r.config for r in plan.runs}
    assert by_label["async"].options.period == 3
    assert by_label["sync"].protocol == "byzsgd-sync"
    with pytest.raises(ConfigError, match="apply to protocol 'byzsgd'"):  # a single run still refuses it
        config_from_dict(base(protocol="byzsgd-sync", byzsgd={"period": 3}))


def test_a_variant_can_pin_a_swept_key_and_identical_runs_are_planned_once():
    sweep = {
        "grid": {"attack.name": ["signflip", "gaussian", "nan"]},
        "variants": [{"label": "attacked"}, {"label": "clean", "attack.name": "none"}],
    }
    plan = expand_sweep(base(sweep=sweep), out_dir="x")
    assert [r.config.attack.name for r in plan.runs if r.label == "clean"] == ["none"]
    assert len(plan.runs) == 4 and plan.duplicates == 2


def test_set_overrides_apply_to_every_run_but_the_grid_wins():
    plan = expand_sweep(base(sweep={"grid": {"seed": [3, 4]}}), ["steps=2", "seed=9"], out_dir="x")
    assert [(r.config.steps, r.config.seed) for r in plan.runs] == [(2, 3), (2, 4)]


def test_set_can_edit_the_sweep_itself():
    sweep = {"grid": {"seed": [0, 1, 2], "attack.name": ["signflip", "nan"]}}
    plan = expand_sweep(base(sweep=sweep), ["sweep.grid.seed=[5]"], out_dir="x")
    assert [(r.config.seed, r.config.attack.name) for r in plan.runs] == [(5, "signflip"), (5, "nan")]


def test_a_file_without_a_sweep_section_is_a_one_run_sweep():
    plan = expand_sweep(base(), out_dir="x")
    assert len(plan.runs) == 1 and plan.swept_keys == []


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"attack.nme": ["signflip"]}}, "attack.nme: unknown key"),
        ({"grid": {"nodes.n_w.x": [1]}}, "sweep key 'nodes.n_w.x': nodes.n_w.x: 'n_w' is not a section"),
        ({"grid": {"seed.value": [1]}}, r"\(seed.value=1\): seed: expected an integer"),
        ({"variants": [{"label": "x", "nodes.n_workers": 4}]}, "nodes.n_workers: unknown key"),
        ({"grid": {"seed": 3}}, "sweep.grid.seed: expected a non-empty list"),
        ({"grid": {"seed": []}}, "sweep.grid.seed: expected a non-empty list"),
        ({"grid": {"aggregator.name": ["mda", "no-such-rule"]}}, "no-such-rule"),
        ({"variants": [{"label": "a"}, {"label": "a", "seed": 1}]}, "'a' is used twice"),
        ({"variants": ["seed=1"]}, r"sweep.variants\[0\]: expected a mapping"),
        ({"grids": {"seed": [1]}}, "sweep.grids: unknown key"),
    ],
)
def test_bad_sweeps_fail_before_running_with_an_error_naming_the_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand_sweep(base(sweep=sweep), out_dir="x")


# --- run ids ------------------------------------------------------------------------------


def test_run_ids_are_stable_and_depend_only_on_what_changes_the_result():
    sweep = {"grid": {"seed": [0, 1]}}
    first = expand_sweep(base(sweep=sweep), out_dir="a")
    again = expand_sweep(base(sweep=sweep), out_dir="b")
    assert [r.run_id for r in first.runs] == [r.run_id for r in again.runs]
    # the hash of a config built directly (no sweep) with the same values is the same
    direct = config_from_dict(base(seed=1, name="other", output_dir="elsewhere", ray={"address": "auto"}))
    assert config_hash(direct) == first.runs[1].digest
    assert config_hash(config_from_dict(base(seed=1, steps=5))) != first.runs[1].digest
    assert first.runs[0].digest != first.runs[1].digest
    # writing a default explicitly does not change what runs
    explicit = config_from_dict(base(seed=1, network={"delay": 1.0}))
    assert config_hash(explicit) == first.runs[1].digest


# --- running ------------------------------------------------------------------------------


def tiny_plan(tmp_path, seeds=(0, 1, 2)):
    return expand_sweep(base(sweep={"grid": {"seed": list(seeds)}}), out_dir=tmp_path / "sweep")


def test_a_sweep_writes_each_run_and_one_results_row_per_run(tmp_path):
    plan = tiny_plan(tmp_path, seeds=(0, 1))
    outcome = run_sweep(plan, quiet=True)
    assert outcome.executed == [r.run_id for r in plan.runs] and not outcome.failed
    rows = read_table(plan.out_dir / "results.csv")
    assert [row["run_id"] for row in rows] == [r.run_id for r in plan.runs]
    assert [row["seed"] for row in rows] == ["0", "1"]
    for row, run in zip(rows, plan.runs):
        run_dir = plan.out_dir / run.run_id
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["status"] == summary["status"] == "finished"
        assert float(row["test_acc"]) == pytest.approx(summary["final"]["test_acc"])
        assert int(row["messages"]) == summary["final"]["messages"] > 0
        assert row["error"] == ""
        assert yaml.safe_load((run_dir / "config.yaml").read_text()) == run.config.to_dict()
        assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 2, 4]
    assert (plan.out_dir / "sweep.yaml").is_file()


def test_rerun_skips_finished_runs_and_reruns_failed_and_interrupted_ones(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path)
    run_sweep(plan, quiet=True)
    dirs = [plan.out_dir / r.run_id for r in plan.runs]
    before = {d.name: (d / "summary.json").read_text() for d in dirs}
    finals = {d.name: results_of(d) for d in dirs}
    # run 0 was interrupted before writing its summary; run 1 failed
    (dirs[0] / "summary.json").unlink()
    failed = json.loads(before[dirs[1].name]) | {"status": "failed", "error": "RuntimeError: lost node"}
    (dirs[1] / "summary.json").write_text(json.dumps(failed))
    assert [run_status(d) for d in dirs] == ["interrupted", "failed", "finished"]
    untouched = (dirs[2] / "summary.json").stat().st_mtime_ns

    runner = CountingRunner(monkeypatch)
    outcome = run_sweep(plan, quiet=True)
    assert runner.calls == [dirs[0].name, dirs[1].name]
    assert outcome.skipped == [dirs[2].name]
    assert (dirs[2] / "summary.json").stat().st_mtime_ns == untouched
    assert [run_status(d) for d in dirs] == ["finished"] * 3
    for d in dirs:  # the local runtime is deterministic: the reruns reproduce the lost results
        assert results_of(d) == finals[d.name]
        assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [0, 2, 4]  # no appended duplicates
    assert [row["status"] for row in read_table(plan.out_dir / "results.csv")] == ["finished"] * 3

    runner.calls.clear()
    assert run_sweep(plan, quiet=True).executed == [] and runner.calls == []


def test_a_failing_run_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path)
    runner = CountingRunner(monkeypatch, fail_seed=0)
    outcome = run_sweep(plan, quiet=True)
    failing = plan.runs[0].run_id
    assert len(runner.calls) == 3
    assert list(outcome.failed) == [failing] and "boom in seed 0" in outcome.failed[failing]
    rows = read_table(plan.out_dir / "results.csv")
    assert [row["status"] for row in rows] == ["failed", "finished", "finished"]
    assert rows[0]["error"] == "RuntimeError: boom in seed 0" and rows[0]["test_acc"] == ""
    assert "boom in seed 0" in (plan.out_dir / failing / "traceback.txt").read_text()
    assert json.loads((plan.out_dir / failing / "summary.json").read_text())["status"] == "failed"

    runner.fail_seed = None
    runner.calls.clear()
    outcome = run_sweep(plan, quiet=True)
    assert runner.calls == [failing] and not outcome.failed
    assert not (plan.out_dir / failing / "traceback.txt").exists()


def test_ctrl_c_stops_the_sweep_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path)
    runner = CountingRunner(monkeypatch, interrupt_seed=1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, quiet=True)
    assert len(runner.calls) == 2  # the third run never started
    rows = read_table(plan.out_dir / "results.csv")
    assert [row["status"] for row in rows] == ["finished", "interrupted", "pending"]

    runner.interrupt_seed = None
    runner.calls.clear()
    run_sweep(plan, quiet=True)
    assert runner.calls == [plan.runs[1].run_id, plan.runs[2].run_id]
    assert [row["status"] for row in read_table(plan.out_dir / "results.csv")] == ["finished"] * 3


def test_cli_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base(sweep={"grid": {"attack.name": ["signflip", "nan"], "seed": [0, 1]}})))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run", "--set", "steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 0 already finished, 4 to run" in printed
    assert "attack.name: signflip, nan" in printed
    assert not out.exists()


def test_cli_reports_a_bad_key_and_failed_runs(tmp_path, capsys, monkeypatch):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base(sweep={"grid": {"model.nam": ["mlp"]}})))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "model.nam: unknown key" in capsys.readouterr().err

    path.write_text(yaml.safe_dump(base(sweep={"grid": {"seed": [0, 1]}})))
    CountingRunner(monkeypatch, fail_seed=1)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: boom in seed 1" in captured.out
    assert "1 run(s) failed" in captured.err


@pytest.mark.slow
def test_parallel_runs_in_processes_give_the_serial_results(tmp_path):
    serial = tiny_plan(tmp_path / "serial", seeds=(0, 1))
    parallel = tiny_plan(tmp_path / "parallel", seeds=(0, 1))
    run_sweep(serial, quiet=True)
    outcome = run_sweep(parallel, parallel=2, quiet=True)
    assert sorted(outcome.executed) == sorted(r.run_id for r in parallel.runs) and not outcome.failed
    for run in serial.runs:
        assert results_of(serial.out_dir / run.run_id) == results_of(parallel.out_dir / run.run_id)


@pytest.mark.slow
def test_ray_runs_share_the_callers_ray(tmp_path, ray_cluster):
    plan = expand_sweep(base(runtime="ray", sweep={"grid": {"seed": [0]}}), out_dir=tmp_path / "sweep")
    outcome = run_sweep(plan, quiet=True)
    assert not outcome.failed, outcome.failed
    assert read_table(plan.out_dir / "results.csv")[0]["status"] == "finished"
    assert ray_cluster.is_initialized()  # the sweep did not shut down a Ray it did not start


def test_sweep_bars_appear_at_the_first_step_after_ray_has_started(monkeypatch, capsys):
    """On a terminal the bars are drawn from a run's first evaluated step, not when the sweep
    starts: Ray's start-up warnings, printed in between, would otherwise land inside them."""
    import sys
    import types

    from byzsgd.sweep.progress import Progress

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    progress = Progress(total=2, quiet=False)
    run = types.SimpleNamespace(run_id="a-123", config=types.SimpleNamespace(steps=4))
    progress.start(run)
    assert progress.sweep is None and progress.bars == {}
    assert capsys.readouterr().err == ""  # nothing drawn yet: Ray may still be starting here
    progress.row("a-123", 2, 0.5)
    assert progress.sweep is not None and progress.bars["a-123"].n == 2
    progress.finish(run, "finished", "")
    assert progress.sweep.n == 1 and progress.bars == {}
    progress.close()
    assert "sweep" in capsys.readouterr().err
