"""The few internal helpers the durability and protocol tests need, imported in this one place,
so that only these lines follow the code when it moves. Everything else is tested through
public behaviour."""

from byzsgd.coding.assignments import majority
from byzsgd.results import METRICS_FILE, SUMMARY_FILE, read_jsonl, run_status

__all__ = ["METRICS_FILE", "SUMMARY_FILE", "majority", "read_jsonl", "run_status"]
