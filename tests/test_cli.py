"""The command line: config layering, listing, argument checks, output off a terminal, where
results go (absolute paths, Ray jobs, storage URIs), and the optional TensorBoard sink."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from byzsgd import __version__
from byzsgd.cli import main
from byzsgd.cli.console import summary_table
from byzsgd.experiment import load_config
from byzsgd.metrics import read_jsonl
from byzsgd.registry import ConfigError
from byzsgd.storage import JOB_ROOT_VARIABLE, RAY_JOB_VARIABLE, resolve_output
from tests.conftest import make_config

BYZSGD = [sys.executable, "-m", "byzsgd.cli"]


def tiny_file(tmp_path, **sections):
    """A small local experiment as a YAML file (every section stated, so nothing comes from the default)."""
    config = make_config(steps=4, eval_every=2, nodes={"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1}, **sections)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


# --- one meaning for a config file ----------------------------------------------------------


def test_an_empty_file_is_the_embedded_default(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    assert main(["config", str(tmp_path / "empty.yaml")]) == 0
    from_empty = capsys.readouterr().out
    assert main(["config"]) == 0
    assert from_empty == capsys.readouterr().out
    default = yaml.safe_load(from_empty)
    assert default["name"] == "byzsgd-digits" and default["steps"] == 300
    assert default["attack"]["name"] == "signflip" and default["server_attack"]["name"] == "signflip"


def test_a_files_keys_replace_the_defaults_whole_sections(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("steps: 12\nattack: {name: alie}\n")
    config = load_config(path)
    assert config.steps == 12 and config.name == "byzsgd-digits"
    assert config.attack.name == "alie" and config.attack.params == {}  # signflip's scale did not carry over
    assert config.server_attack.name == "signflip"  # not in the file: the default's attack stays on


def test_run_on_a_sweep_file_points_to_byzsgd_sweep(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("steps: 2\nsweep: {grid: {seed: [0, 1]}}\n")
    assert main(["run", str(path)]) == 2
    assert f"run it with: byzsgd sweep {path}" in capsys.readouterr().err


# --- the command line itself ---------------------------------------------------------------


def test_version_and_help_and_ranges(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"byzsgd {__version__}"
    with pytest.raises(SystemExit) as done:
        main(["sweep", "x.yaml", "--parallel", "0"])
    assert done.value.code == 2 and "--parallel: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    help_text = capsys.readouterr().out
    assert "--set" in help_text and "--quiet" not in help_text and "--out" not in help_text


def test_list_shows_names_parameters_and_bounds(capsys):
    assert main(["list", "attacks"]) == 0
    attacks = capsys.readouterr().out
    assert "signflip" in attacks and "scale=1.0" in attacks and "alie" in attacks and "omniscient" in attacks
    assert main(["list", "aggregators"]) == 0
    aggregators = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "n >= 2*f+1" in aggregators["mda"] and "n >= 4*f+3" in aggregators["bulyan"]
    assert "the base rule's bound" in aggregators["ctma"]
    assert main(["list"]) == 0
    everything = capsys.readouterr().out
    for kind in ("aggregators", "attacks", "protocols", "datasets", "models"):
        assert f"\n{kind} (" in f"\n{everything}"
    assert "byzsgd: {period=None" in everything and "mnist5k" in everything and "cnn" in everything


def test_the_listed_byzsgd_bound_is_the_one_validation_enforces(capsys):
    assert main(["list", "protocols"]) == 0
    assert "n_ps >= 3f_ps+2, n_w >= 3f_w+1" in capsys.readouterr().out
    for f in (1, 2):
        nodes = {"n_ps": 3 * f + 2, "f_ps": f, "n_w": 3 * f + 1, "f_w": f}
        make_config(nodes=nodes, aggregator={"name": "mean"})  # at the bound: accepted
        for key in ("n_ps", "n_w"):
            with pytest.raises(ConfigError, match="cannot tolerate"):
                make_config(nodes={**nodes, key: nodes[key] - 1}, aggregator={"name": "mean"})


def test_a_closed_pipe_ends_quietly():
    listing = subprocess.Popen([*BYZSGD, "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.read(20)
    listing.stdout.close()  # what `| head -c 20` does
    assert listing.wait(timeout=60) in (0, 141)
    assert b"Traceback" not in listing.stderr.read()


def test_summary_table_marks_left_out_rows_and_splits_late_from_refused():
    rows = [
        {"step": s, "time_s": 30.0 + s / 10, "test_acc": 0.5, "rejected": 10 + s, "rejected_stale": 10 + s}
        for s in range(0, 80, 10)
    ]
    rows[-1]["rejected"] += 3  # three refused for another reason at the end
    table = summary_table({"status": "finished"}, rows).splitlines()
    assert table[2].strip() == "..."  # step 0, then the ellipsis, then the last five
    assert [line.split()[0] for line in table[1:8]] == ["0", "...", "30", "40", "50", "60", "70"]
    last = dict(zip(table[0].split(), table[7].split()))
    # 10 steps/s since step 0, not 70 steps / 37 s: the 30 s of start-up before step 0 do not count.
    assert last["steps/s"] == "10.00" and last["late"] == "80" and last["refused"] == "3"


# --- a run: header, plain progress, where results go ------------------------------------------


def test_a_piped_run_prints_a_header_plain_lines_and_an_absolute_path(tmp_path, capsys, monkeypatch):
    path = tiny_file(tmp_path, attack={"name": "signflip", "params": {"scale": 3.0}})
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--out", "relative/run"]) == 0
    out = capsys.readouterr().out.splitlines()
    run_dir = (tmp_path / "relative" / "run").resolve()
    assert out[0].endswith(f"-> {run_dir}")
    assert "workers 4 (1 Byzantine: signflip(scale=3.0))" in out[0] and "servers 2 (none Byzantine)" in out[0]
    steps = [line for line in out if line.startswith("[test] step ")]
    assert [line.split()[2] for line in steps] == ["0/4", "2/4", "4/4"]
    assert not any("\r" in line or "\x1b" in line for line in out)
    assert out[-1] == f"results: {run_dir}"
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 2, 4]


def test_quiet_prints_the_start_and_the_end_only(tmp_path, capsys):
    assert main(["run", str(tiny_file(tmp_path)), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("byzsgd test: ") and "[test] step" not in out and f"results: {tmp_path / 'run'}" in out


def test_inside_a_ray_job_relative_outputs_go_to_the_durable_root(tmp_path, monkeypatch, capsys):
    job_dir, root = tmp_path / "job", tmp_path / "durable"
    job_dir.mkdir()
    monkeypatch.chdir(job_dir)  # Ray's temporary copy of the working directory
    monkeypatch.setenv(RAY_JOB_VARIABLE, "{}")
    monkeypatch.setenv(JOB_ROOT_VARIABLE, str(root))
    assert resolve_output("results/x") == root / "results" / "x"
    assert resolve_output(tmp_path / "abs") == tmp_path / "abs"
    assert main(["run", str(tiny_file(job_dir)), "--quiet"]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (root / "results").iterdir()  # <output_dir>/<name>-<timestamp> under the root
    assert f"results: {run_dir}" in out and "results are on the Ray head" in out
    monkeypatch.delenv(RAY_JOB_VARIABLE)
    assert resolve_output("results/x") == job_dir / "results" / "x"


def test_a_storage_uri_receives_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "bucket" / "run1"
    assert main(["run", str(tiny_file(tmp_path)), "--out", target.as_uri(), "--quiet"]) == 0
    assert f"copied to: {target.as_uri()}" in capsys.readouterr().err
    summary = json.loads((target / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert [row["step"] for row in read_jsonl(target / "metrics.jsonl")] == [0, 2, 4]
    with pytest.raises(ConfigError, match="only accepted by --out"):
        resolve_output("s3://bucket/x")


def test_tensorboard_sink_writes_the_rows_as_scalars(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", str(tiny_file(tmp_path)), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard"]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("test_acc")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [e.step for e in accuracy] == [0, 2, 4]
    assert [e.value for e in accuracy] == pytest.approx([row["test_acc"] for row in rows])


def test_tensorboard_missing_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["run", str(tiny_file(tmp_path)), "--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    assert "pip install 'byzsgd[tensorboard]'" in capsys.readouterr().err
    assert not Path(tmp_path / "run" / "metrics.jsonl").exists()
