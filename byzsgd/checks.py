"""Load-time checks of single fields and of the components a config names.

Whatever a config can get wrong is caught here, before any results folder exists, as one
ConfigError naming the field and the rule: ranges that parsing alone cannot see (types and
finiteness are checked while parsing, in byzsgd.config), the Ray address syntax, settings that
do not apply to the chosen role, and the optimizer, aggregator and attacks, which are built
once so that an unknown name or a parameter of the wrong type fails now, not at step 1.
A new field with a range belongs in FIELD_RULES; tests/test_bad_inputs.py holds one bad
value per rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from byzsgd.config import AttackConfig, ExperimentConfig, byzantine_count
from byzsgd.registry import ConfigError

# Ray refuses an object store below 75 MiB.
MIN_OBJECT_STORE = 75 * 1024 * 1024
# Sizes far past anything a run can hold: a typo (an extra digit) fails here, not as an out-of-memory later.
MAX_NODES = 10_000
MAX_HIDDEN = 1_000_000

# (dotted field, rule holds for the value, the rule in words). None always passes: it means "default".
FIELD_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"),
    ("nodes.n_ps", lambda v: v <= MAX_NODES, f"must be at most {MAX_NODES}"),
    ("nodes.n_w", lambda v: v <= MAX_NODES, f"must be at most {MAX_NODES}"),
    ("model.hidden", lambda v: v <= MAX_HIDDEN, f"must be at most {MAX_HIDDEN}"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("data.eval_samples", lambda v: v >= 1, "must be at least 1"),
    ("attack.count", lambda v: v >= 0, "must be >= 0 (or null: f_w)"),
    ("server_attack.count", lambda v: v >= 0, "must be >= 0 (or null: f_ps)"),
    ("ray.torch_threads", lambda v: v >= 1, "must be at least 1"),
    ("ray.num_cpus", lambda v: v >= 1, "must be at least 1 (or null: all cores)"),
    ("ray.object_store_memory", lambda v: v >= MIN_OBJECT_STORE, f"must be at least {MIN_OBJECT_STORE} (75 MiB)"),
    ("ray.snapshot_timeout_s", lambda v: v > 0, "must be positive"),
    ("ray.start_timeout_s", lambda v: v > 0, "must be positive"),
    ("ray.connect_timeout_s", lambda v: v > 0, "must be positive"),
    (
        "ray.num_gpus_per_actor",
        lambda v: v >= 0 and (v <= 1 or v == int(v)),
        "must be >= 0, and a whole number above 1 (a fraction shares one GPU)",
    ),
]

# HOST:PORT (a head node's GCS) or ray://HOST:PORT (Ray Client, usually port 10001), or auto/local.
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_ADDRESS = re.compile(rf"(?:ray://)?{_HOST}:(?P<port>\d{{1,5}})")


def dotted(config: Any, name: str) -> Any:
    for part in name.split("."):
        config = getattr(config, part)
    return config


def check_fields(config: ExperimentConfig) -> None:
    """Every check of this module, in the order a user would fix them."""
    for name, holds, rule in FIELD_RULES:
        value = dotted(config, name)
        if value is not None and not holds(value):
            raise ConfigError(f"{name}={value}: {rule}")
    check_address(config.ray.address)
    build_components(config)
    check_attack_roles(config)


def check_address(address: str | None) -> None:
    """A syntax check only: whether anything listens there is learnt when the run connects."""
    if address is None or address in ("auto", "local"):
        return
    match = _ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ConfigError(
            f"ray.address={address!r}: expected auto, HOST:PORT (a running head node, e.g. 10.0.0.1:6379) "
            "or ray://HOST:PORT (Ray Client, e.g. ray://10.0.0.1:10001)"
        )


def check_attack_roles(config: ExperimentConfig) -> None:
    """Settings that would be silently ignored for a role."""
    from byzsgd.attacks import ATTACKS

    for field_name in ("attack", "server_attack"):
        attack = getattr(config, field_name)
        if attack.count is not None and attack.ids is not None:
            raise ConfigError(f"{field_name}: give count or ids, not both (ids name the Byzantine nodes)")
        # The count defaults to f_ps: with f_ps = 0 the attack would run on no server (count: 0 says so on purpose).
        unset = attack.count is None and attack.ids is None
        if field_name == "server_attack" and attack.name != "none" and config.nodes.f_ps == 0 and unset:
            raise ConfigError(
                f"server_attack.name={attack.name!r} with nodes.f_ps=0: no server may be Byzantine "
                "(set server_attack.name=none, or raise nodes.f_ps)"
            )
        if attack.name != "none" and field_name == "server_attack":
            if getattr(ATTACKS[attack.name], "flips_labels", False):
                raise ConfigError(
                    f"server_attack.name={attack.name!r}: a worker attack (servers compute no gradients); "
                    "a server sends a reversed model with signflip"
                )


def build_components(config: ExperimentConfig) -> None:
    """Build what the nodes will build, so that a bad name or parameter is a ConfigError now."""
    from byzsgd.aggregators import make_aggregator
    from byzsgd.attacks import ATTACKS
    from byzsgd.optim import make_estimator, make_optimizer

    make_optimizer(config.optimizer)
    make_estimator(config.optimizer)
    make_aggregator(config.aggregator.name, f=config.nodes.f_w, **config.aggregator.params)
    for field_name in ("attack", "server_attack"):
        attack = getattr(config, field_name)
        ATTACKS.build(attack.name, field=f"{field_name}.params", **attack.params)


# --- the checks every protocol shares (each protocol then checks its own rules) ---------------


def validate(config: ExperimentConfig) -> None:
    """Checks that hold for every protocol; each protocol then checks its own rules."""
    positive = {
        "steps": config.steps,
        "eval_every": config.eval_every,
        "nodes.n_ps": config.nodes.n_ps,
        "nodes.n_w": config.nodes.n_w,
        "data.batch_size": config.data.batch_size,
        "model.hidden": config.model.hidden,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value}: must be at least 1")
    for name in ("f_ps", "f_w"):
        if getattr(config.nodes, name) < 0:
            raise ConfigError(f"nodes.{name}={getattr(config.nodes, name)}: must be at least 0")
    if config.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr={config.optimizer.lr}: must be positive")
    if not 0 < config.data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction={config.data.test_fraction}: must be in (0, 1)")
    if config.data.batch_accounting == "per_step" and config.data.batch_size < config.nodes.n_w:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} with data.batch_accounting=per_step: "
            f"must be at least nodes.n_w={config.nodes.n_w} (one sample per worker's mini-batch)"
        )
    if config.data.alpha <= 0:
        raise ConfigError(f"data.alpha={config.data.alpha}: must be positive")
    if config.network.delay < 0 or not 0 <= config.network.jitter <= 1:
        raise ConfigError("network: delay must be >= 0 and jitter in [0, 1]")
    if not 0 <= config.network.reorder <= 1:
        raise ConfigError(f"network.reorder={config.network.reorder}: must be a probability in [0, 1]")
    for name in ("reorder_delay", "observe_timeout", "time_unit_s"):
        if getattr(config.network, name) < 0:
            raise ConfigError(f"network.{name}={getattr(config.network, name)}: must be >= 0")
    if config.ray.actors is not None and config.ray.actors < 1:
        raise ConfigError(f"ray.actors={config.ray.actors}: must be at least 1 (or null: one actor per node)")
    if config.ray.num_cpus_per_actor <= 0:
        raise ConfigError(f"ray.num_cpus_per_actor={config.ray.num_cpus_per_actor}: must be positive")
    if config.ray.address and config.ray.address.startswith(("http://", "https://")):
        raise ConfigError(
            f"ray.address={config.ray.address}: that is the dashboard (job submission) address, which a driver "
            f"cannot join; submit the run as a job instead: ray job submit --address {config.ray.address} "
            "--working-dir . -- byzsgd run CONFIG (the job joins with --address auto), or use ray://HEAD:10001"
        )
    check_workload(config)
    check_fields(config)
    check_gpus(config)
    check_attack(config.attack, "attack", "workers", config.nodes.n_w, config.nodes.f_w)
    check_attack(config.server_attack, "server_attack", "servers", config.nodes.n_ps, config.nodes.f_ps)


def check_gpus(config: ExperimentConfig) -> None:
    """GPUs are Ray resources: an actor computes on one only if Ray gave it one."""
    ray_config = config.ray
    gpus = ray_config.num_gpus_per_actor  # its range: byzsgd.checks.FIELD_RULES
    if len(set(ray_config.gpu_roles)) != len(ray_config.gpu_roles):
        raise ConfigError(f"ray.gpu_roles={ray_config.gpu_roles}: roles must be distinct")
    if config.runtime != "ray":
        return
    if gpus > 0 and not ray_config.gpu_roles:
        raise ConfigError(f"ray.num_gpus_per_actor={gpus} with ray.gpu_roles=[]: name the roles that get GPUs")
    if gpus > 0 and config.device == "cpu":
        raise ConfigError(f"ray.num_gpus_per_actor={gpus} with device: cpu: the actors would hold GPUs they never use")
    if gpus == 0 and config.device == "cuda":
        raise ConfigError(
            "device: cuda on Ray needs ray.num_gpus_per_actor > 0: an actor uses only a GPU Ray assigned it"
        )


def check_workload(config: ExperimentConfig) -> None:
    """The model and dataset exist and accept their params (user factories are imported, not called)."""
    from byzsgd.data import check_dataset
    from byzsgd.models import check_model

    check_model(config.model.name, config.model.hidden, config.model.params)
    check_dataset(config.data.dataset, config.data.params)


def check_attack(attack: AttackConfig, field_name: str, role: str, n: int, f: int) -> None:
    from byzsgd.attacks import ATTACKS

    rule = ATTACKS.build(attack.name, field=f"{field_name}.params", **attack.params)
    if attack.rotate_every is not None:
        if role != "workers":
            raise ConfigError(
                f"{field_name}.rotate_every: only workers may rotate (a server's model is the experiment's result)"
            )
        if attack.rotate_every < 1 or attack.ids is not None:
            raise ConfigError(f"{field_name}.rotate_every={attack.rotate_every}: must be >= 1 and without ids")
        if rule.flips_labels:
            raise ConfigError(f"{field_name}.rotate_every: labelflip fixes its workers for the whole run")
    count = byzantine_count(attack, f)
    if count > f:
        raise ConfigError(
            f"{field_name}.count={count}: at most f={f} {role} may be Byzantine "
            f"(raise nodes.f_{'w' if role == 'workers' else 'ps'} to tolerate more)"
        )
    if attack.ids is not None:
        if len(set(attack.ids)) != len(attack.ids):
            raise ConfigError(f"{field_name}.ids={attack.ids}: ids must be distinct")
        bad = [i for i in attack.ids if not 0 <= i < n]
        if bad:
            raise ConfigError(f"{field_name}.ids: {bad[0]} is not a {role[:-1]} index in [0, {n})")
