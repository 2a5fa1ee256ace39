"""Bad input through the command line: for each, exit code 2, one line on stderr naming the
field and the rule, and nothing written (no results folder). Failures after the start: one
line plus the path of traceback.txt, and a summary.json that says how the run ended.

Every new config field with a rule adds a row to BAD_SETTINGS (or BAD_FILES).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from byzsgd import cli

# (--set overrides / extra CLI arguments, what the one-line message must contain)
BAD_SETTINGS = [
    # numbers: finite, in range, of the right type
    (["optimizer.lr=.nan"], "optimizer.lr=nan: must be a finite number"),
    (["optimizer.lr=.inf"], "optimizer.lr=inf: must be a finite number"),
    (["optimizer.lr=1.0e+400"], "optimizer.lr=inf: must be a finite number"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: must be positive"),
    (["optimizer.lr=fast"], "optimizer.lr: expected a number"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1.0: must be >= 0"),
    (["optimizer.weight_decay=.nan"], "optimizer.weight_decay=nan: must be a finite number"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be in [0, 1)"),
    (["optimizer.momentum=.nan"], "optimizer.momentum=nan: must be a finite number"),
    (["byzsgd.lipschitz=.nan"], "byzsgd.lipschitz=nan: must be a finite number"),
    (["byzsgd.lipschitz=0"], "lipschitz must be > 0"),
    (["data.alpha=.nan"], "data.alpha=nan: must be a finite number"),
    (["data.test_fraction=1"], "data.test_fraction=1.0: must be in (0, 1)"),
    (["data.eval_samples=0"], "data.eval_samples=0: must be at least 1"),
    (["network.delay=.nan"], "network.delay=nan: must be a finite number"),
    (["seed=-1"], "seed=-1: must be in [0, 2^63)"),
    (["seed=9223372036854775808"], "seed=9223372036854775808: out of range"),
    (["steps=1.5"], "steps: expected an integer"),
    (["steps=0"], "steps=0: must be at least 1"),
    (["steps=1180591620717411303424"], "steps=1180591620717411303424: out of range"),
    (["nodes.f_w=-1"], "nodes.f_w=-1: must be at least 0"),
    (["attack.count=-1"], "attack.count=-1: must be >= 0"),
    (["attack.count=3"], "attack.count=3: at most f=2 workers"),
    (["attack.rotate_every=0"], "attack.rotate_every=0: must be >= 1"),
    (["ray.torch_threads=0"], "ray.torch_threads=0: must be at least 1"),
    (["ray.object_store_memory=-1"], "ray.object_store_memory=-1: must be at least"),
    (["ray.num_cpus=0"], "ray.num_cpus=0: must be at least 1"),
    (["ray.num_cpus_per_actor=0"], "ray.num_cpus_per_actor=0.0: must be positive"),
    (["ray.snapshot_timeout_s=0"], "ray.snapshot_timeout_s=0.0: must be positive"),
    (["ray.start_timeout_s=0"], "ray.start_timeout_s=0.0: must be positive"),
    (["ray.connect_timeout_s=-1"], "ray.connect_timeout_s=-1.0: must be positive"),
    (["ray.num_gpus_per_actor=1.5"], "ray.num_gpus_per_actor=1.5: must be >= 0, and a whole number above 1"),
    (
        ["--runtime", "ray", "ray.num_cpus=2", "ray.num_cpus_per_actor=0.5"],
        "ray.num_cpus_per_actor=0.5 x 12 actors needs 6 CPUs, but the local Ray gets ray.num_cpus=2",
    ),
    # sizes: an extra digit fails here, not as an out-of-memory later
    (["nodes.n_w=99999999999"], "nodes.n_w=99999999999: must be at most 10000"),
    (["nodes.n_ps=99999999999"], "nodes.n_ps=99999999999: must be at most 10000"),
    (["model.hidden=99999999999"], "model.hidden=99999999999: must be at most 1000000"),
    # names and parameters of the components, built at load time
    (["protocol=nope"], "protocol: unknown protocol 'nope'"),
    (["optimizer.name=adam"], "optimizer: unknown optimizer 'adam'"),
    (["optimizer.params={foo: 1}"], "unknown parameter 'foo' for optimizer 'sgd'"),
    (["optimizer.name=mu2sgd", "optimizer.params={beta_min: high}"], "parameter beta_min='high': expected a number"),
    (["aggregator.name=nope"], "unknown aggregator 'nope'"),
    (["aggregator.params={foo: 1}"], "unknown parameter 'foo' for aggregator 'mda'"),
    (["aggregator.name=krum", "aggregator.params={neighbours: abc}"], "neighbours='abc': expected an integer"),
    (["aggregator.name=geometric_median", "aggregator.params={tol: .nan}"], "tol=nan: expected a finite number"),
    (["byzsgd.model_rule=nope"], "byzsgd.model_rule: unknown aggregator 'nope'"),
    (["attack.name=nope"], "attack.params: unknown attack 'nope'"),
    (["server_attack.name=nope"], "server_attack.params: unknown attack 'nope'"),
    (["attack.params={scale: abc}"], "attack.params: attack 'signflip': parameter scale='abc': expected a number"),
    (["attack={name: gaussian, params: {std: .nan}}"], "parameter std=nan: expected a finite number"),
    (["attack={name: stale, params: {lag: 1.5}}"], "parameter lag=1.5: expected an integer"),
    # settings that would be silently ignored
    (["protocol=byzsgd-sync", "byzsgd.period=3"], "byzsgd: these options apply to protocol 'byzsgd'"),
    (["ps.window=3"], "ps: these options apply to protocol 'ps', not to the chosen 'byzsgd'"),
    (["server_attack={name: labelflip}"], "server_attack.name='labelflip': a worker attack"),
    (["server_attack.rotate_every=5"], "server_attack.rotate_every: only workers may rotate"),
    (["attack.ids=[0]", "attack.count=1"], "attack: give count or ids, not both"),
    (
        ["protocol=ps", "nodes.n_ps=1", "nodes.f_ps=0"],  # the default's server_attack would run on no server
        "server_attack.name='signflip' with nodes.f_ps=0: no server may be Byzantine",
    ),
    (["foo=1"], "foo: unknown key"),
    # the command line itself
    (["steps=[1"], "--set 'steps=[1': the value is not valid YAML"),
    (["steps"], "--set 'steps': expected key=value"),
    (["--address", "not an address"], "ray.address='not an address': expected auto, HOST:PORT"),
    (["--address", "10.0.0.1:99999"], "ray.address='10.0.0.1:99999'"),
    (["--address", "10.0.0.1"], "ray.address='10.0.0.1'"),
    (["--address", "ray://10.0.0.1"], "ray.address='ray://10.0.0.1'"),
    (["--address", "10.0.0.1:0"], "ray.address='10.0.0.1:0'"),
    (["--address", "http://10.0.0.1:8265"], "that is the dashboard (job submission) address"),
]
if not torch.cuda.is_available():  # the driver evaluates on its device: checked before any folder exists
    BAD_SETTINGS.append((["device=cuda"], "device=cuda: torch sees no CUDA device on this machine"))

GOOD_ADDRESSES = ["auto", "local", "10.0.0.1:6379", "head-node.example.org:6379", "ray://10.0.0.1:10001", "[::1]:6379"]

BAD_FILES = [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a YAML text file"),
    (b"\x00\x01\x02binary", "not valid YAML"),
    (b"steps: [1\n", "not valid YAML"),
    (b"- steps\n- 3\n", "expected a mapping at the top level"),
    (b"optimizer: {lr: .nan}\n", "optimizer.lr=nan: must be a finite number"),
]


def arguments(settings: list[str]) -> list[str]:
    out, pending = [], list(settings)
    while pending:
        item = pending.pop(0)
        out += [item, pending.pop(0)] if item.startswith("--") else ["--set", item]
    return out


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2
    assert expected in err
    assert err.startswith("byzsgd: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("settings", "expected"), BAD_SETTINGS, ids=[" ".join(s) for s, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, settings, expected):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    code, err = run_cli(capsys, ["run", "--runtime", "local", "--set", f"output_dir={out}", *arguments(settings)])
    assert_one_line_error(code, err, expected)
    assert list(tmp_path.iterdir()) == []  # no results folder, nothing else either


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_good_addresses_pass_the_syntax_check(capsys, address):
    assert cli.main(["config", "--address", address]) == 0
    assert f"address: {address}" in capsys.readouterr().out.replace("'", "")


@pytest.mark.parametrize(("content", "expected"), BAD_FILES, ids=[e for _, e in BAD_FILES])
def test_bad_config_file_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, content, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    code, err = run_cli(capsys, ["run", str(path), "--set", f"output_dir={tmp_path / 'results'}"])
    assert_one_line_error(code, err, expected)
    assert list(tmp_path.iterdir()) == [path]


def test_missing_config_file(tmp_path, capsys):
    code, err = run_cli(capsys, ["run", str(tmp_path / "missing.yaml")])
    assert_one_line_error(code, err, "does not exist")


def test_default_sections_may_stay_when_only_the_protocol_changes(capsys):
    # The embedded default has a byzsgd: section; switching protocol must not trip over it.
    assert cli.main(["config", "--set", "protocol=byzsgd-sync"]) == 0
    one_server = ["--set", "protocol=ps", "--set", "nodes.n_ps=1", "--set", "nodes.f_ps=0"]
    assert cli.main(["config", *one_server, "--set", "server_attack.name=none"]) == 0


# Settings the chosen runtime or protocol does not use: a warning (a sweep or --runtime switches
# them under one file), and the command still runs.
IGNORED_SETTINGS = [
    (["--runtime", "local", "--set", "ray.actors=3"], "ray.actors: not used with runtime: local"),
    (["--runtime", "local", "--address", "auto"], "ray.address: not used with runtime: local"),
    (
        ["--set", "protocol=draco", "--set", "nodes={n_ps: 1, f_ps: 0, n_w: 10, f_w: 2}"]
        + ["--set", "server_attack.name=none", "--set", "aggregator.name=median"],
        "aggregator.name='median': not used by protocol 'draco'",
    ),
    (
        ["--set", "nodes.f_w=0", "--set", "attack={name: signflip}"],
        "attack.name='signflip' with nodes.f_w=0: no worker is Byzantine",
    ),
]


@pytest.mark.parametrize(("arguments", "expected"), IGNORED_SETTINGS, ids=[e for _, e in IGNORED_SETTINGS])
def test_a_setting_that_does_not_apply_is_a_one_line_warning(capsys, arguments, expected):
    assert cli.main(["config", *arguments]) == 0
    err = capsys.readouterr().err
    assert err.startswith("byzsgd: warning: ") and expected in err and len(err.splitlines()) == 1, err


def test_settings_that_apply_give_no_warning(capsys):
    draco = ["--set", "protocol=draco", "--set", "nodes={n_ps: 1, f_ps: 0, n_w: 10, f_w: 2}"]
    draco += ["--set", "server_attack.name=none"]
    assert cli.main(["config", "--runtime", "ray", "--set", "ray.actors=3"]) == 0
    assert cli.main(["config", *draco]) == 0  # the default aggregator: nothing chosen, nothing ignored
    # an omniscient worker attack takes the aggregator as its target, so it is used
    assert cli.main(["config", *draco, "--set", "aggregator.name=median", "--set", "attack={name: ipm}"]) == 0
    # f_w=0 with an explicit count of 0 says "no Byzantine worker" on purpose
    assert cli.main(["config", "--set", "nodes.f_w=0", "--set", "attack={name: signflip, count: 0}"]) == 0
    assert capsys.readouterr().err == ""


def test_a_sweep_warns_once_per_ignored_setting_and_still_plans(capsys):
    from pathlib import Path

    sweep = Path(__file__).parent.parent / "experiments" / "redundancy.yaml"  # one base aggregator for all
    assert cli.main(["sweep", str(sweep), "--dry-run"]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert sorted(w.split("protocol ")[1].split(" ")[0] for w in warnings) == ["'draco'", "'solon'"], warnings


# --- results: never mixed, never lost -----------------------------------------------------

TINY = """
name: tiny
runtime: local
steps: 4
eval_every: 2
device: cpu
nodes: {n_ps: 1, f_ps: 0, n_w: 4, f_w: 1}
protocol: ps
data: {dataset: synthetic, batch_size: 16}
model: {name: logreg}
attack: {name: none}
server_attack: {name: none}
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_out_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys, tiny):
    out = tmp_path / "run"
    assert cli.main(["run", str(tiny), "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"config.yaml", "metrics.jsonl", "summary.json"}
    capsys.readouterr()
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out), "--quiet", "--set", "steps=6"])
    assert_one_line_error(code, err, "already holds a run")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing appended or replaced
    (out / "notes.txt").write_text("mine")
    assert cli.main(["run", str(tiny), "--out", str(out), "--quiet", "--overwrite", "--set", "steps=6"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]  # the new run only, not appended to the old one
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes the run's files only


def test_overwrite_removes_nothing_when_a_run_file_is_a_folder(tmp_path, capsys, tiny):
    out = tmp_path / "run"
    (out / "summary.json").mkdir(parents=True)
    (out / "config.yaml").write_text("old")
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out), "--overwrite"])
    assert_one_line_error(code, err, "summary.json is a folder, not a file")
    assert (out / "config.yaml").read_text() == "old"


def test_out_that_is_a_file_is_refused(tmp_path, capsys, tiny):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out)])
    assert_one_line_error(code, err, "exists and is not a folder")
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out / "run")])
    assert_one_line_error(code, err, "cannot be created or written in")
    assert out.read_text() == "not a folder"


def test_an_error_during_the_run_is_one_line_with_the_traceback_path(tmp_path, monkeypatch, capsys, tiny):
    from byzsgd import runtime

    def broken(config, monitor):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(runtime, "run", broken)
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out), "--quiet"])
    assert code == 1
    assert err.strip() == f"byzsgd: run failed: RuntimeError: boom (traceback: {out / 'traceback.txt'})"
    assert "RuntimeError: boom" in (out / "traceback.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]


def test_sigterm_ends_the_run_with_a_summary(tmp_path, monkeypatch, capsys, tiny):
    from byzsgd import runtime

    def killed(config, monitor):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises in this thread long before
        raise AssertionError("SIGTERM was not turned into an exception")

    monkeypatch.setattr(runtime, "run", killed)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["run", str(tiny), "--out", str(out), "--quiet"])
    assert code == 128 + signal.SIGTERM
    assert "terminated by signal SIGTERM" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGTERM" in summary["error"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the run's only


def test_a_bug_while_loading_is_one_line_not_a_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(cli, "load_config", broken)
    code, err = run_cli(capsys, ["config"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("byzsgd: cannot load the config: RuntimeError: unexpected (traceback: ")
    path = err.strip().rsplit("traceback: ", 1)[1].rstrip(")")
    assert "RuntimeError: unexpected" in open(path).read()
    os.unlink(path)


def test_an_unexpected_sweep_error_is_one_line(tmp_path, monkeypatch, capsys):
    import byzsgd.sweep

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(byzsgd.sweep, "load_sweep", broken)
    code, err = run_cli(capsys, ["sweep", str(tmp_path / "sweep.yaml")])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("byzsgd: sweep failed: OSError: disk on fire (traceback: ")
    os.unlink(err.strip().rsplit("traceback: ", 1)[1].rstrip(")"))


def config_leaves(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        if field.name == "options":
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            out += config_leaves(hints[field.name], f"{prefix}{field.name}.")
        else:
            out.append(prefix + field.name)
    return out


def test_no_value_of_any_field_escapes_as_anything_but_a_one_line_config_error():
    """Property over every field (new ones included): odd values are accepted or refused with a
    ConfigError on one line, never another exception."""
    from byzsgd.config import ExperimentConfig
    from byzsgd.experiment import load_config
    from byzsgd.protocols.byzsgd import ByzSGDOptions
    from byzsgd.registry import ConfigError

    keys = config_leaves(ExperimentConfig) + [f"byzsgd.{k}" for k in config_leaves(ByzSGDOptions)]
    for key in keys:
        for value in (".nan", "-1", "x", "[]", "{a: [1]}", "1.0e+400"):
            try:
                load_config(None, [f"{key}={value}"])
            except ConfigError as error:
                assert "\n" not in str(error), (key, value, str(error))


@pytest.mark.slow
def test_sigterm_on_ray_ends_the_run_cleanly(tmp_path):
    """ray.init installs its own SIGTERM handler (exit at once); the run must still end with a
    summary, one line, exit code 143, and Ray shut down."""
    import subprocess
    import sys

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("runtime: local", "runtime: ray").replace("steps: 4", "steps: 100000"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "byzsgd.cli", "run", str(config), "--quiet", "--out", str(out)]
    command += ["--set", "ray.num_cpus=2", "--set", "ray.object_store_memory=100000000", "--set", "ray.actors=2"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "byzsgd: Terminated: terminated by signal SIGTERM" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGTERM" in summary["error"]
