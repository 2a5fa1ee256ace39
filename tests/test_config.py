from pathlib import Path

import pytest
import yaml

from byzsgd.config import (
    AttackConfig,
    ExperimentConfig,
    NodesConfig,
    apply_override,
    byzantine_count,
    parse_dataclass,
    parse_value,
    read_config_file,
    read_yaml_mapping,
    yaml_problem,
)
from byzsgd.experiment import load_config
from byzsgd.protocols.byzsgd import gather_period
from byzsgd.registry import ConfigError
from tests.conftest import make_config


def test_embedded_default_loads_and_is_the_demo_setup():
    config = load_config()
    assert config.protocol == "byzsgd"
    assert (config.nodes.n_ps, config.nodes.f_ps, config.nodes.n_w, config.nodes.f_w) == (5, 1, 7, 2)
    assert config.data.dataset == "digits"
    assert config.attack.name != "none"


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(None, ["nodes.n_w=10", "optimizer.lr=0.05", "attack.name=none", "byzsgd.period=7"])
    assert config.nodes.n_w == 10 and config.optimizer.lr == 0.05
    assert config.attack.name == "none" and config.options.period == 7


@pytest.mark.parametrize(
    "n_ps, f_ps, message",
    [
        (4, 1, "n_ps=4 cannot tolerate f_ps=1: ByzSGD needs n_ps >= 3*f_ps+2 = 5"),
        (7, 2, "n_ps=7 cannot tolerate f_ps=2: ByzSGD needs n_ps >= 3*f_ps+2 = 8"),
    ],
)
def test_too_few_servers_names_both_numbers_and_the_rule(n_ps, f_ps, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("+", r"\+")):
        make_config(nodes={"n_ps": n_ps, "f_ps": f_ps})


def test_too_few_workers():
    with pytest.raises(ConfigError, match=r"n_w=6 cannot tolerate f_w=2: ByzSGD needs n_w >= 3\*f_w\+1 = 7"):
        make_config(nodes={"n_w": 6})


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"nodes\.n_servers: unknown key \(known: f_ps, f_w, n_ps, n_w\)"):
        make_config(nodes={"n_servers": 3})


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match="steps: expected an integer, got 'many'"):
        make_config(steps="many")
    with pytest.raises(ConfigError, match="optimizer.lr: expected a number"):
        make_config(optimizer={"lr": "fast"})


def test_unknown_attack_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown attack 'bogus'; known: .*signflip"):
        make_config(attack={"name": "bogus"})


def test_attack_parameter_typo_is_named():
    with pytest.raises(ConfigError, match="unknown parameter 'scal' for attack 'signflip'"):
        make_config(attack={"name": "signflip", "params": {"scal": 2}})


def test_more_byzantine_than_tolerated_is_refused():
    with pytest.raises(ConfigError, match="attack.count=3: at most f=2 workers may be Byzantine"):
        make_config(attack={"name": "signflip", "count": 3})


def test_unknown_protocol_and_aggregator():
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        make_config(protocol="nope")
    with pytest.raises(ConfigError, match="unknown aggregator 'nope'"):
        make_config(aggregator={"name": "nope"})


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["steps"])


def test_gather_period_follows_the_papers_formula_and_is_capped():
    assert gather_period(make_config(optimizer={"lr": 0.1}, byzsgd={"lipschitz": 1.0})) == 3  # floor(1/0.3)
    assert gather_period(make_config(optimizer={"lr": 0.01}, byzsgd={"lipschitz": 2.0})) == 16
    assert gather_period(make_config(optimizer={"lr": 1e-5}, byzsgd={"max_period": 50})) == 50
    assert gather_period(make_config(byzsgd={"period": 7})) == 7


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("protocol: byzsgd\nsteps: 12\nbyzsgd: {period: 4}\n")
    config = load_config(path)
    assert config.steps == 12 and config.options.period == 4
    again = make_config(**config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_a_sweep_file_or_a_missing_file_is_refused_with_what_to_do(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text("sweep: {steps: [1, 2]}\n")
    with pytest.raises(ConfigError) as error:
        read_config_file(sweep)
    assert str(error.value) == f"{sweep} is a sweep file (it has a sweep: section); run it with: byzsgd sweep {sweep}"
    assert read_config_file(_write(tmp_path / "run.yaml", "sweeps: 1\nsteps: 3\n")) == {"sweeps": 1, "steps": 3}
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as error:
        read_config_file(missing)
    assert str(error.value) == f"config file {str(missing)!r} does not exist"


def _write(path, text):
    path.write_text(text)
    return path


def test_an_unreadable_or_malformed_yaml_file_is_one_line_saying_where(tmp_path, monkeypatch):
    bad = _write(tmp_path / "bad.yaml", "steps: [1\n")
    with pytest.raises(ConfigError) as error:
        read_yaml_mapping(bad, "config file")
    assert str(error.value) == f"{bad}: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError) as error:
        read_yaml_mapping(bad, "sweep file")
    assert str(error.value) == f"sweep file {str(bad)!r}: cannot be read (Permission denied)"


def test_yaml_problem_is_the_first_line_or_the_problem_with_its_place():
    assert yaml_problem(yaml.YAMLError("first line\nsecond line")) == "first line"
    mark = yaml.Mark("f.yaml", 0, 4, 7, None, None)
    marked = yaml.MarkedYAMLError(context="while parsing", problem="found junk", problem_mark=mark)
    assert yaml_problem(marked) == "found junk (line 5, column 8)"
    assert yaml_problem(yaml.MarkedYAMLError(problem="found junk")) == "found junk"


def test_an_override_splits_at_its_first_equals_sign():
    data = {}
    apply_override(data, "name=a=b")
    apply_override(data, "optimizer.lr=0.5")
    assert data == {"name": "a=b", "optimizer": {"lr": 0.5}}
    with pytest.raises(ConfigError, match=r"^name.x: 'name' is not a section$"):
        apply_override(data, "name.x=1")
    with pytest.raises(ConfigError) as error:
        apply_override(data, "steps=[1")
    problem = "expected ',' or ']', but got '<stream end>' (line 1, column 3)"
    assert str(error.value) == f"--set 'steps=[1': the value is not valid YAML: {problem}"


def test_to_dict_holds_the_protocol_options_and_is_a_deep_copy():
    config = make_config(plugins=[], byzsgd={"period": 7})
    data = config.to_dict()
    assert data["byzsgd"]["period"] == 7 and data["protocol"] == "byzsgd" and "options" not in data
    data["plugins"].append("mine")
    data["attack"]["params"]["x"] = 1
    assert config.plugins == [] and config.attack.params == {}
    config.options = None
    assert "byzsgd" not in config.to_dict()


@pytest.mark.parametrize(
    ("attack", "count"),
    [
        (AttackConfig(name="none", count=2), 0),  # no attack: nobody is Byzantine, whatever count says
        (AttackConfig(name="none"), 0),
        (AttackConfig(name="signflip"), 3),  # default: the tolerated f
        (AttackConfig(name="signflip", count=1), 1),
        (AttackConfig(name="signflip", ids=[0, 4]), 2),
    ],
)
def test_byzantine_count(attack, count):
    assert byzantine_count(attack, 3) == count


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"options": {"period": 3}}, "options: unknown key (known: "),
        ({"nodes": 3}, "nodes: expected a mapping, got 3"),
        ({"attack": {"count": "x"}}, "attack.count: expected an integer, got 'x'"),
        ({"runtime": "nope"}, "runtime: 'nope' is not one of ray, local"),
        ({"attack": {"ids": "x"}}, "attack.ids: expected a list, got 'x'"),
        ({"ray": {"gpu_roles": ["workers", "x"]}}, "ray.gpu_roles[1]: 'x' is not one of workers, servers"),
        ({"aggregator": {"params": 3}}, "aggregator.params: expected a mapping, got 3"),
        ({"data": {"augment": "yes"}}, "data.augment: expected true or false, got 'yes'"),
        ({"attack": {"ids": [9]}}, "attack.ids: 9 is not a worker index in [0, 7)"),
        ({"server_attack": {"name": "signflip", "ids": [5]}}, "server_attack.ids: 5 is not a server index in [0, 5)"),
        (
            {"server_attack": {"name": "signflip", "count": 2}},
            "server_attack.count=2: at most f=1 servers may be Byzantine (raise nodes.f_ps to tolerate more)",
        ),
        (
            {"ray": {"address": "https://head:8265"}},
            "ray.address=https://head:8265: that is the dashboard (job submission) address, which a driver cannot "
            "join; submit the run as a job instead: ray job submit --address https://head:8265 --working-dir . -- "
            "byzsgd run CONFIG (the job joins with --address auto), or use ray://HEAD:10001",
        ),
    ],
)
def test_a_field_of_the_wrong_shape_names_its_path(sections, expected):
    with pytest.raises(ConfigError) as error:
        make_config(**sections)
    assert str(error.value).startswith(expected)


def test_a_config_that_is_not_a_mapping_or_a_null_section():
    with pytest.raises(ConfigError, match=r"^config: expected a mapping, got \[1\]$"):
        parse_dataclass(ExperimentConfig, [1], "")
    assert make_config(nodes=None).nodes == NodesConfig()  # a null section: its defaults


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"foo": 1}, "foo: unknown key (known: aggregator, attack, byzsgd, byzsgd-sync, data, detox, device, draco, "),
        ({"protocol": 3}, "protocol: expected a name, got 3"),
        (
            {"protocol": "nope"},
            "protocol: unknown protocol 'nope'; known: byzsgd, byzsgd-sync, detox, draco, ps, solon",
        ),
        ({"byzsgd": 3}, "byzsgd: expected a mapping of protocol options"),
        ({"model": {"name": 3}}, "model.name: expected a string, got 3"),
        ({"seed": -(2**63) - 1}, "seed=-9223372036854775809: out of range (a 64-bit integer)"),
        ({"seed": -(2**63)}, "seed=-9223372036854775808: must be in [0, 2^63)"),  # parsed, then refused by its rule
        ({"optimizer": {"lr": 2**1000}}, f"optimizer.lr={2**1000}: must be a finite number"),
        ({"optimizer": {"lr": 10**400}}, f"optimizer.lr={10**400}: must be a finite number"),
    ],
)
def test_top_level_keys_and_numbers_beyond_their_type_are_refused_by_name(sections, expected):
    with pytest.raises(ConfigError) as error:
        make_config(**sections)
    assert str(error.value).startswith(expected)


def test_integers_that_fit_a_float_are_numbers_and_unsupported_types_are_a_bug():
    assert make_config(optimizer={"lr": 2001}).optimizer.lr == 2001.0
    with pytest.raises(TypeError, match=r"^x: unsupported config type set\[int\]$"):
        parse_value(set[int], {1}, "x")
