"""The few internal helpers the durability and protocol tests need, imported in this one place:
the run-folder and sweep code is being moved between modules, and only these lines should
have to follow it. Everything else is tested through public behaviour."""

from byzsgd.coding.assignments import majority
from byzsgd.metrics import METRICS_FILE, read_jsonl
from byzsgd.runner import SUMMARY_FILE
from byzsgd.sweep import run_status

__all__ = ["METRICS_FILE", "SUMMARY_FILE", "majority", "read_jsonl", "run_status"]
