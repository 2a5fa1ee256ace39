"""User code by import path: plugin modules, registered rules and attacks, model and dataset
factories, their errors, and a plugin outside the package running on every runtime."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import byzsgd
from byzsgd.aggregators import AGGREGATORS, make_aggregator
from byzsgd.attacks import ATTACKS, AttackContext
from byzsgd.cli import main
from byzsgd.plugins import load_plugins
from byzsgd.registry import ConfigError
from byzsgd.training import Workload
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]

# A plugin as a researcher would write it, outside the package: a rule, an attack, a model and a dataset.
PLUGIN = '''
import numpy as np
import torch
from torch import nn

import byzsgd


@byzsgd.register_aggregator("tmp-trimmed-norm", bound=(2, 1))
def trimmed_norm(vectors, f, extra=0):
    keep = vectors.shape[0] - f - extra
    return vectors[vectors.norm(dim=1).argsort()[:keep]].mean(dim=0)


@byzsgd.register_attack("tmp-scaled")
def scaled(honest, context, scale=-5.0):
    return scale * honest


def make_net(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def blobs(n=400, classes=3, seed=0):
    """Three Gaussian blobs in 2-D: x float32 (n, 2), y int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centers = np.array([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])[:classes]
    x = (centers[y] + rng.normal(0, 0.7, size=(n, 2))).astype(np.float32)
    return x[:300], y[:300], torch.from_numpy(x[300:]), torch.from_numpy(y[300:])


def wrong_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 1))


def bad_labels():
    x = np.zeros((10, 2), dtype=np.float32)
    return x, np.zeros(10, dtype=np.float32), x, np.zeros(10, dtype=np.int64)
'''


@pytest.fixture(autouse=True)
def isolated_registries():
    """What a test registers (directly or by importing a plugin) is gone after it, so the
    registries' coverage tests elsewhere see only the library's own names."""
    saved = {registry: dict(registry._items) for registry in (AGGREGATORS, ATTACKS)}
    modules = set(sys.modules)
    yield
    for registry, items in saved.items():
        registry._items.clear()
        registry._items.update(items)
    for name in set(sys.modules) - modules:
        if name in ("byz_tmp_plugin", "my_plugin"):
            del sys.modules[name]


def plugin_config(**changes):
    data = {
        "name": "plugin",
        "plugins": ["byz_tmp_plugin"],
        "runtime": "local",
        "steps": 30,
        "eval_every": 15,
        "device": "cpu",
        "nodes": {"n_ps": 3, "f_ps": 0, "n_w": 5, "f_w": 1},
        "data": {"dataset": "byz_tmp_plugin:blobs", "params": {"n": 400}, "batch_size": 16},
        "model": {"name": "byz_tmp_plugin:make_net", "params": {"hidden": 8}},
        "optimizer": {"lr": 0.2},
        "aggregator": {"name": "tmp-trimmed-norm"},
        "attack": {"name": "tmp-scaled", "params": {"scale": -5.0}},
        "server_attack": {"name": "none"},
    }
    data.update(changes)
    return data


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "byz_tmp_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def subprocess_env(plugin_folder):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_folder), str(REPO)])
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return env


# --- registration --------------------------------------------------------------------------


def test_a_registered_function_rule_gets_the_library_checks_and_nan_filtering():
    @byzsgd.register_aggregator("test-first-row", bound=(2, 1))
    def first_row(vectors, f, offset=0.0):
        return vectors[0] + offset

    rule = make_aggregator("test-first-row", f=1, offset=1.0)
    x = np.array([[np.nan, 0.0], [2.0, 3.0], [5.0, 5.0]])
    assert np.allclose(rule(x), [3.0, 4.0])  # the NaN row was dropped before the function saw it
    assert AGGREGATORS["test-first-row"].min_inputs(2) == 5
    with pytest.raises(ConfigError, match=r"needs n >= 2\*f\+1 = 3 inputs, got 2"):
        rule(np.ones((2, 2)))
    with pytest.raises(ConfigError, match=r"aggregator: unknown parameter 'scale'.*accepts: f, offset"):
        make_aggregator("test-first-row", f=1, scale=2.0)
    # The same definition registered again (a notebook cell run twice) replaces itself ...
    byzsgd.register_aggregator("test-first-row", bound=(2, 1))(first_row)
    # ... but a built-in name cannot be taken, and a function must take (vectors, f).
    with pytest.raises(ValueError, match="registered twice"):
        byzsgd.register_aggregator("mda")(first_row)
    with pytest.raises(TypeError, match="must take 2 positional arguments"):
        byzsgd.register_aggregator("test-one-arg")(lambda vectors: vectors[0])


def test_a_registered_function_attack_is_built_with_its_params_and_checked():
    @byzsgd.register_attack("test-shift")
    def shift(honest, context, by=1.0):
        return honest + by if context.round >= 0 else None

    attack = ATTACKS.build("test-shift", field="attack.params", by=2.0)
    context = AttackContext("w0", "ps0", "gradient", 3, np.random.default_rng(0))
    out = attack(np.ones(4, dtype=np.float32), context)
    assert out.dtype == np.float32 and np.array_equal(out, np.full(4, 3.0))
    with pytest.raises(ConfigError, match=r"attack.params: unknown parameter 'scale'"):
        ATTACKS.build("test-shift", field="attack.params", scale=1.0)

    @byzsgd.register_attack("test-short")
    def short(honest, context):
        return honest[:2]

    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \(4,\)"):
        ATTACKS.build("test-short")(np.ones(4), context)


# --- errors name the field -----------------------------------------------------------------


def test_a_missing_plugin_module_or_attribute_is_a_one_line_error_naming_the_field(plugin_dir):
    with pytest.raises(
        ConfigError, match=r"plugins\[1\]: no module named 'no_such_plugin' \(is its folder on PYTHONPATH"
    ):
        make_config(plugins=["byz_tmp_plugin", "no_such_plugin"])
    with pytest.raises(ConfigError, match=r"plugins: expected a list of module names"):
        load_plugins("byz_tmp_plugin")
    with pytest.raises(ConfigError, match=r"model.name: no module named 'nowhere'"):
        make_config(model={"name": "nowhere:net"})
    with pytest.raises(ConfigError, match=r"model.name: module 'byz_tmp_plugin' has no attribute 'no_net'"):
        make_config(model={"name": "byz_tmp_plugin:no_net"})
    with pytest.raises(
        ConfigError, match=r"model.params: model factory 'make_net'.*unexpected keyword argument 'depth'"
    ):
        make_config(model={"name": "byz_tmp_plugin:make_net", "params": {"depth": 3}})
    with pytest.raises(ConfigError, match=r"data.dataset: module 'byz_tmp_plugin' has no attribute 'nope'"):
        make_config(data={"dataset": "byz_tmp_plugin:nope"})
    with pytest.raises(ConfigError, match=r"data.params: dataset function 'blobs'.*unexpected keyword argument 'size'"):
        make_config(data={"dataset": "byz_tmp_plugin:blobs", "params": {"size": 3}})
    with pytest.raises(ConfigError, match=r"unknown aggregator 'tmp-nothing'"):
        make_config(plugins=["byz_tmp_plugin"], aggregator={"name": "tmp-nothing"})
    with pytest.raises(
        ConfigError, match=r"model.name: unknown model 'vgg'; known: logreg, mlp, cnn, cifarnet, resnet18"
    ):
        make_config(model={"name": "vgg"})


def test_a_model_with_the_wrong_output_or_a_dataset_with_bad_labels_is_refused(plugin_dir):
    config = make_config(model={"name": "byz_tmp_plugin:wrong_classes"})
    with pytest.raises(
        ConfigError, match=r"model.name: byz_tmp_plugin:wrong_classes outputs \(2, 11\).*expected \(2, 10\)"
    ):
        Workload(config)
    config = make_config(data={"dataset": "byz_tmp_plugin:bad_labels"}, model={"name": "logreg"})
    with pytest.raises(ConfigError, match=r"y_train must be 10 integer labels.*dtype float32"):
        Workload(config)


# --- a plugin outside the package, end to end ----------------------------------------------


def test_a_plugin_runs_from_python_and_from_yaml_in_process(plugin_dir, tmp_path):
    out = byzsgd.run(plugin_config(), run_dir=tmp_path / "api")
    assert out.summary["status"] == "finished" and out.summary["parameters"] == 2 * 8 + 8 + 8 * 3 + 3
    assert out.rows[-1]["test_acc"] > 0.9  # three separable blobs, one worker sending -5x its gradient
    assert out.rows[-1]["byzantine_messages"] > 0
    assert list(out.frame["step"]) == [0, 15, 30]
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(plugin_config()))
    again = byzsgd.run(path, {"data.params.n": 400}, run_dir=tmp_path / "yaml")

    def untimed(rows):
        return [{k: v for k, v in row.items() if k not in ("time_s", "steps_per_s")} for row in rows]

    assert untimed(again.rows) == untimed(out.rows)  # same seed, same numbers


def test_a_plugin_runs_in_a_sweep_with_parallel_processes(plugin_dir, tmp_path):
    sweep = plugin_config(name="plugin-sweep", steps=10, eval_every=5, output_dir=str(tmp_path))
    sweep["sweep"] = {"grid": {"seed": [0, 1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--parallel", "2", "--quiet"]) == 0
    summaries = sorted((tmp_path / "plugin-sweep").rglob("summary.json"))
    assert len(summaries) == 2
    assert all(json.loads(p.read_text())["status"] == "finished" for p in summaries)


@pytest.mark.slow
def test_a_plugin_on_pythonpath_runs_on_ray_from_yaml_through_the_python_api(tmp_path):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "byz_tmp_plugin.py").write_text(PLUGIN)
    config = plugin_config(
        runtime="ray",
        steps=10,
        eval_every=5,
        nodes={"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1},
        ray={"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024, "actors": 2},
    )
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(config))
    script = textwrap.dedent(f"""
        import json, byzsgd
        out = byzsgd.run({str(tmp_path / "plugin.yaml")!r}, run_dir={str(tmp_path / "run")!r})
        print("RESULT", json.dumps({{"status": out.summary["status"], "actors": out.summary.get("actors"),
                                     "acc": out.rows[-1]["test_acc"], "byz": out.rows[-1]["byzantine_messages"]}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(folder),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["status"] == "finished" and result["actors"] == 2  # servers and workers: both actors imported it
    assert result["byz"] > 0 and result["acc"] > 0.5
