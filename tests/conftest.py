import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE. "ci", the default (so CI, `make test` and
# the mutation tester's stats pass all see it), is derandomized: the same examples on every run, so a red
# run reproduces anywhere and a mutant is judged by the same examples as the original. "dev"
# explores fresh examples each run; "thorough" many more. No deadline: timings on a shared
# machine are noise.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
settings.register_profile("ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
# `make mutation`: "ci"'s derandomized examples, fewer of them, so that the thousands of mutants
# that each rerun the properties finish in minutes; the targeted tests carry most kills.
settings.register_profile("mutation", max_examples=15, derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

from byzsgd.experiment import config_from_dict  # noqa: E402


def make_config(**sections):
    """A small, fast experiment on the synthetic dataset in the in-process runtime.
    Keyword arguments replace top-level keys; nested dicts update the section."""
    data = {
        "name": "test",
        "seed": 0,
        "runtime": "local",
        "steps": 60,
        "eval_every": 20,
        "device": "cpu",
        "nodes": {"n_ps": 5, "f_ps": 1, "n_w": 7, "f_w": 2},
        "data": {"dataset": "synthetic", "batch_size": 16},
        "model": {"name": "logreg"},
        "optimizer": {"lr": 0.2},
        "aggregator": {"name": "mda"},
        "attack": {"name": "none"},
        "server_attack": {"name": "none"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(data)


@pytest.fixture
def config_factory():
    return make_config


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray for the whole session, always shut down."""
    import ray

    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
