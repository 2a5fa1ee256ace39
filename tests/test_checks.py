"""Load-time checks (byzsgd.checks) called directly: port bounds and the full wording of their errors."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from byzsgd.checks import check_address, check_attack, check_attack_roles, check_gpus
from byzsgd.config import AttackConfig
from byzsgd.registry import ConfigError


@pytest.mark.parametrize("address", ["10.0.0.1:1", "head:65535", "ray://[::1]:10001", "auto", "local", None])
def test_addresses_with_a_port_in_range_pass(address):
    check_address(address)


@pytest.mark.parametrize("address", ["10.0.0.1:0", "head:65536", "head", "ray://head"])
def test_an_address_out_of_range_or_without_a_port_names_the_forms_expected(address):
    expected = (
        f"ray.address={address!r}: expected auto, HOST:PORT (a running head node, e.g. 10.0.0.1:6379) "
        "or ray://HOST:PORT (Ray Client, e.g. ray://10.0.0.1:10001)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_address(address)


def roles(name: str, f_ps: int, ids: list[int] | None = None) -> SimpleNamespace:
    none = SimpleNamespace(name="none", count=None, ids=None)
    return SimpleNamespace(
        attack=none, server_attack=SimpleNamespace(name=name, count=None, ids=ids), nodes=SimpleNamespace(f_ps=f_ps)
    )


def test_a_server_attack_with_no_byzantine_server_says_how_to_fix_it():
    expected = (
        "server_attack.name='signflip' with nodes.f_ps=0: no server may be Byzantine "
        "(set server_attack.name=none, or raise nodes.f_ps)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_attack_roles(roles("signflip", f_ps=0))
    check_attack_roles(roles("signflip", f_ps=0, ids=[0]))  # ids name the server: not left to f_ps
    check_attack_roles(roles("signflip", f_ps=1))


def test_a_label_flipping_attack_on_a_server_is_refused_in_full_words():
    name = "labelflip"
    expected = (
        f"server_attack.name={name!r}: a worker attack (servers compute no gradients); "
        "a server sends a reversed model with signflip"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_attack_roles(roles(name, f_ps=1))


def test_an_attack_parameter_it_does_not_take_fails_at_load_time():
    from byzsgd.checks import build_components
    from byzsgd.config import ExperimentConfig

    config = ExperimentConfig()
    config.server_attack.name, config.server_attack.params = "signflip", {"bogus": 1}
    with pytest.raises(ConfigError, match=r"^server_attack.params: unknown parameter 'bogus' for attack 'signflip'"):
        build_components(config)


def gpu_config(runtime="ray", device="auto", gpus=0.0, roles=("workers",)) -> SimpleNamespace:
    ray = SimpleNamespace(num_gpus_per_actor=gpus, gpu_roles=list(roles))
    return SimpleNamespace(runtime=runtime, device=device, ray=ray)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (dict(roles=("workers", "workers")), "ray.gpu_roles=['workers', 'workers']: roles must be distinct"),
        (dict(gpus=0.5, roles=()), "ray.num_gpus_per_actor=0.5 with ray.gpu_roles=[]: name the roles that get GPUs"),
        (
            dict(gpus=0.5, device="cpu"),
            "ray.num_gpus_per_actor=0.5 with device: cpu: the actors would hold GPUs they never use",
        ),
        (
            dict(device="cuda"),
            "device: cuda on Ray needs ray.num_gpus_per_actor > 0: an actor uses only a GPU Ray assigned it",
        ),
    ],
)
def test_gpu_settings_that_cannot_work_on_ray_are_refused_in_full_words(settings, expected):
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_gpus(gpu_config(**settings))


@pytest.mark.parametrize(
    "settings",
    [
        dict(),  # no GPUs, device auto
        dict(roles=()),  # no GPUs, so no roles needed
        dict(device="cpu"),
        dict(gpus=0.5, device="cuda"),
        dict(gpus=0.5),
        dict(runtime="local", device="cuda"),  # the in-process runtime uses the driver's device: no Ray resources
        dict(runtime="local", gpus=0.5, roles=()),
    ],
)
def test_gpu_settings_that_work_pass(settings):
    check_gpus(gpu_config(**settings))


def test_attack_checks_name_their_field_and_build_the_attack():
    with pytest.raises(ConfigError, match=r"^server_attack.params: attack 'signflip': parameter scale='abc'"):
        check_attack(AttackConfig(name="signflip", params={"scale": "abc"}), "server_attack", "servers", 5, 1)
    with pytest.raises(ConfigError, match=r"^attack.rotate_every: labelflip fixes its workers for the whole run$"):
        check_attack(AttackConfig(name="labelflip", rotate_every=2), "attack", "workers", 7, 2)
    check_attack(AttackConfig(name="signflip", rotate_every=2), "attack", "workers", 7, 2)  # other attacks may rotate


@pytest.mark.parametrize(
    ("attack", "role", "expected"),
    [
        (
            AttackConfig(name="signflip", rotate_every=0),
            "workers",
            "attack.rotate_every=0: must be >= 1 and without ids",
        ),
        (
            AttackConfig(name="signflip", rotate_every=2, ids=[0]),
            "workers",
            "attack.rotate_every=2: must be >= 1 and without ids",
        ),
        (
            AttackConfig(name="signflip", count=3),
            "workers",
            "attack.count=3: at most f=2 workers may be Byzantine (raise nodes.f_w to tolerate more)",
        ),
        (
            AttackConfig(name="signflip", count=3),
            "servers",
            "attack.count=3: at most f=2 servers may be Byzantine (raise nodes.f_ps to tolerate more)",
        ),
        (AttackConfig(name="signflip", ids=[1, 1]), "workers", "attack.ids=[1, 1]: ids must be distinct"),
        (AttackConfig(name="signflip", ids=[7, 9]), "workers", "attack.ids: 7 is not a worker index in [0, 7)"),
        (AttackConfig(name="signflip", ids=[-1]), "servers", "attack.ids: -1 is not a server index in [0, 7)"),
    ],
)
def test_who_is_byzantine_is_checked_in_full_words(attack, role, expected):
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_attack(attack, "attack", role, 7, 2)


def test_byzantine_choices_at_the_limits_pass():
    check_attack(AttackConfig(name="signflip", rotate_every=1), "attack", "workers", 7, 2)
    check_attack(AttackConfig(name="signflip", ids=[0, 6]), "attack", "workers", 7, 2)
    check_attack(AttackConfig(name="signflip", count=2), "attack", "workers", 7, 2)


@pytest.mark.parametrize("field", ["steps", "eval_every"])
def test_counts_below_one_name_their_field(field):
    from tests.conftest import make_config

    with pytest.raises(ConfigError, match=f"^{field}=0: must be at least 1$"):
        make_config(**{field: 0})


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"nodes": {"n_ps": 0}}, "nodes.n_ps=0: must be at least 1"),
        ({"nodes": {"n_w": 0}}, "nodes.n_w=0: must be at least 1"),
        ({"data": {"batch_size": 0}}, "data.batch_size=0: must be at least 1"),
        ({"model": {"name": "mlp", "hidden": 0}}, "model.hidden=0: must be at least 1"),
        ({"optimizer": {"lr": 0.0}}, "optimizer.lr=0.0: must be positive"),
        ({"data": {"test_fraction": 0.0}}, "data.test_fraction=0.0: must be in (0, 1)"),
        (
            {"data": {"batch_size": 6, "batch_accounting": "per_step"}},
            "data.batch_size=6 with data.batch_accounting=per_step: "
            "must be at least nodes.n_w=7 (one sample per worker's mini-batch)",
        ),
        ({"data": {"alpha": 0.0}}, "data.alpha=0.0: must be positive"),
        ({"network": {"delay": -1.0}}, "network: delay must be >= 0 and jitter in [0, 1]"),
        ({"network": {"jitter": 1.5}}, "network: delay must be >= 0 and jitter in [0, 1]"),
        ({"network": {"reorder": 1.5}}, "network.reorder=1.5: must be a probability in [0, 1]"),
        ({"network": {"reorder_delay": -1.0}}, "network.reorder_delay=-1.0: must be >= 0"),
        ({"ray": {"actors": 0}}, "ray.actors=0: must be at least 1 (or null: one actor per node)"),
    ],
)
def test_shared_settings_out_of_range_name_the_field_and_the_rule(sections, expected):
    from tests.conftest import make_config

    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        make_config(**sections)


def test_shared_settings_at_their_limits_pass():
    from tests.conftest import make_config

    config = make_config(
        data={"dataset": "synthetic", "batch_size": 7, "batch_accounting": "per_step"},
        network={"delay": 0.0, "jitter": 0.0, "reorder": 1.0, "reorder_delay": 0.0, "observe_timeout": 0.0},
        ray={"actors": 1},
    )
    assert config.ray.actors == 1 and config.network.reorder == 1.0
    assert make_config(network={"jitter": 1.0}).network.jitter == 1.0
