"""byzsgd: fully decentralized Byzantine-resilient distributed SGD on Ray.

    import byzsgd
    result = byzsgd.run("experiments/custom.yaml", steps=50)      # see byzsgd.api.run

    @byzsgd.register_aggregator("my-median")                      # see byzsgd.plugins
    def my_median(vectors, f): ...
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_plugins", "register_aggregator", "register_attack", "run"]

# Imported on first use: `import byzsgd` stays cheap (no torch) for the CLI and the config code.
_LAZY = {
    "run": "byzsgd.api",
    "register_aggregator": "byzsgd.plugins",
    "register_attack": "byzsgd.plugins",
    "load_plugins": "byzsgd.plugins",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'byzsgd' has no attribute {name!r}")
