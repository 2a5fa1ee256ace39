"""Sweep execution: every unfinished run, one at a time, in a pool of processes (in-process
runtime) or in driver threads sharing one Ray connection (Ray runtime).

A sweep's processes die with it: SIGTERM is turned into an interruption like Ctrl-C (queued runs
never start, running ones are interrupted and record it, stragglers are terminated), and each pool
process watches the sweep's process and stops when it is gone (even killed with SIGKILL). Only
one sweep at a time works in a sweep folder (a lock file), so a rerun never races a sweep that
is still running there.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from byzsgd import results
from byzsgd.config import ExperimentConfig
from byzsgd.registry import ConfigError
from byzsgd.sweep.plan import PlannedRun, SweepPlan
from byzsgd.sweep.progress import Progress
from byzsgd.sweep.state import SweepOutcome, write_plan, write_results

NOT_STARTED = "not started"  # what a queued run returns once the sweep is stopping
LOCK_FILE = ".sweep.lock"  # in a sweep folder, locked while a sweep runs there
GRACE_S = 5.0  # how long an interrupted run has to record that it was interrupted


class SweepTerminated(KeyboardInterrupt):
    """SIGTERM to the sweep, raised in its main thread: the sweep stops as on Ctrl-C."""


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`SweepTerminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise SweepTerminated(f"terminated by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    """Hold the sweep folder's lock (released by the kernel when this process ends, however)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ConfigError(
                f"{out_dir}: another sweep is running in this folder (pid {holder}); wait for it to end "
                "or stop it, then rerun to resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_info(run: PlannedRun) -> dict[str, Any]:
    """What the sweep knows about a run and the run's folder does not: its label and settings."""
    return {"run_id": run.run_id, "hash": run.digest, "label": run.label, "overrides": run.overrides}


def execute_run(
    config: ExperimentConfig,
    run_dir: str,
    info: dict[str, Any],
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, str]:
    """Run one experiment into ``run_dir``; returns (status, error) and never raises an Exception.

    A Ctrl-C still propagates (the runner has recorded the run as interrupted by then)."""
    from byzsgd.runner import run_experiment

    path = Path(run_dir)
    try:
        prepare_run_dir(path, info)
        run_experiment(config, path, on_row=on_row)
        return "finished", ""
    except Exception as error:  # noqa: BLE001 - a failed run is a result, not a crash of the sweep
        message = "".join(traceback.format_exception_only(error)).strip()
        try:
            path.mkdir(parents=True, exist_ok=True)
            results.write_traceback(path)
            summary = results.read_summary(path)
            if summary is None or summary.get("status") != "failed":  # failed before the runner wrote one
                results.write_summary(path, {"name": config.name, "status": "failed", "error": message})
        except OSError as unwritable:  # the sweep still goes on, and the table says why
            message += f" (its folder cannot record it: {unwritable})"
        return "failed", message


def prepare_run_dir(path: Path, info: dict[str, Any]) -> None:
    """A clean folder for a (re)run: whatever an earlier attempt left, however corrupt (a file
    where the folder belongs, a folder where a file belongs), goes."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    results.clear_run(path)  # the metrics file is appended to
    results.write_run_info(path, info)


_events: Any = None  # the progress queue of a pool process
_stop: Any = None  # set by the sweep on Ctrl-C: queued runs must not start
_running = False  # whether this pool process is running a run (SIGINT interrupts it) or idle


def _init_pool_process(events: Any, stop: Any) -> None:
    global _events, _stop
    _events, _stop = events, stop
    signal.signal(signal.SIGINT, _on_interrupt)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()
    import torch

    torch.set_num_threads(1)  # several runs share the cores: one thread each avoids oversubscription


def _on_interrupt(signum: int, frame: Any) -> None:
    """A run is interrupted (it records so in its summary); an idle process just ends."""
    if _running:
        raise KeyboardInterrupt
    os._exit(128 + signum)


def _exit_with_parent(sentinel: int) -> None:
    """Stop this pool process once the sweep is gone, however it died: its run is interrupted
    (and says so), then the process ends, rather than run the queue and hang."""
    multiprocessing.connection.wait([sentinel])
    _stop.set()  # the runs already queued to this process must not start
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(GRACE_S)
    os._exit(1)


def _execute_in_pool(config: ExperimentConfig, run_dir: str, info: dict[str, Any]) -> tuple[str, str]:
    global _running
    from byzsgd.plugins import load_plugins

    load_plugins(config.plugins)  # the user's registered rules and attacks exist here too
    if _stop.is_set():
        return NOT_STARTED, ""
    run_id = info["run_id"]
    _events.put(("start", run_id, 0, None))
    _running = True
    try:
        return execute_run(
            config, run_dir, info, lambda row: _events.put(("row", run_id, row["step"], row.get("test_acc")))
        )
    finally:
        _running = False


def run_sweep(plan: SweepPlan, parallel: int = 1, quiet: bool = False) -> SweepOutcome:
    """Run every unfinished run of the plan; finished ones are skipped, failures recorded.

    How runs share the machine: runs on the in-process runtime are independent simulations,
    so with ``parallel > 1`` they go to a pool of processes (spawned, one torch thread each).
    Runs on the Ray runtime create their own actors on one shared Ray connection that this
    driver opens once; ``parallel > 1`` runs that many at a time from driver threads (Ray's
    driver API is thread-safe, and each run only ever touches its own actors). Nesting each
    run's driver inside a Ray task would instead put its results on whichever node ran it.
    """
    if parallel < 1:
        raise ConfigError(f"--parallel={parallel}: must be at least 1")
    with sweep_lock(plan.out_dir), terminate_like_interrupt():
        return run_locked(plan, parallel, quiet)


def run_locked(plan: SweepPlan, parallel: int, quiet: bool) -> SweepOutcome:
    write_plan(plan)
    outcome = SweepOutcome(plan)
    todo = []
    for run in plan.runs:
        if results.run_status(plan.run_dir(run)) == "finished":
            outcome.skipped.append(run.run_id)
        else:
            todo.append(run)
    progress = Progress(len(todo), quiet)

    def record(run: PlannedRun, status: str, error: str) -> None:
        outcome.executed.append(run.run_id)
        if status != "finished":
            outcome.failed[run.run_id] = error
        progress.finish(run, status, error)
        write_results(plan)

    try:
        local_runs = [r for r in todo if r.config.runtime == "local"]
        ray_runs = [r for r in todo if r.config.runtime != "local"]
        if local_runs:
            if parallel == 1:
                run_serially(plan, local_runs, progress, record)
            else:
                run_in_processes(plan, local_runs, parallel, progress, record)
        if ray_runs:
            progress.clear()  # a mixed sweep's local runs drew the bars already
            with ray_connection(ray_runs[0].config):
                if parallel == 1:
                    run_serially(plan, ray_runs, progress, record)
                else:
                    run_in_threads(plan, ray_runs, parallel, progress, record)
    finally:
        progress.close()
        outcome.results = write_results(plan)
    return outcome


Recorder = Callable[[PlannedRun, str, str], None]


def run_serially(plan: SweepPlan, runs: list[PlannedRun], progress: Progress, record: Recorder) -> None:
    for run in runs:
        progress.start(run)
        status, error = execute_run(
            run.config,
            str(plan.run_dir(run)),
            run_info(run),
            lambda row, run_id=run.run_id: progress.row(run_id, row["step"], row.get("test_acc")),
        )
        record(run, status, error)


def run_in_threads(
    plan: SweepPlan, runs: list[PlannedRun], parallel: int, progress: Progress, record: Recorder
) -> None:
    stop = threading.Event()

    def task(run: PlannedRun) -> tuple[str, str]:
        if stop.is_set():
            return NOT_STARTED, ""
        progress.start(run)
        return execute_run(
            run.config,
            str(plan.run_dir(run)),
            run_info(run),
            lambda row: progress.row(run.run_id, row["step"], row.get("test_acc")),
        )

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        drain({pool.submit(task, run): run for run in runs}, progress, record, events=None)
    except BaseException:
        # Threads cannot be interrupted: queued runs are dropped, and the running ones end when
        # the sweep's Ray connection closes (their runs are then recorded as failed).
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def run_in_processes(
    plan: SweepPlan, runs: list[PlannedRun], parallel: int, progress: Progress, record: Recorder
) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    events, stop = context.Queue(), context.Event()
    remaining = list(runs)
    while remaining:
        started: set[str] = set()
        pool = ProcessPoolExecutor(
            parallel, mp_context=context, initializer=_init_pool_process, initargs=(events, stop)
        )
        try:
            futures = {
                pool.submit(_execute_in_pool, r.config, str(plan.run_dir(r)), run_info(r)): r
                for r in remaining
            }
            lost = drain(futures, progress, record, events, started)
        except BaseException as error:
            # Ctrl-C at a terminal reached the pool's processes too; anything else did not.
            stop_pool(pool, stop, interrupt=type(error) is not KeyboardInterrupt)
            raise
        pool.shutdown(wait=True)
        # A pool process that died (out of memory, killed) breaks the pool: the runs it was
        # running are recorded as failed, the ones that had not started go to a fresh pool.
        for run in lost:
            if run.run_id in started:
                record(run, "failed", "the process running it died (out of memory or killed)")
        remaining = [r for r in lost if r.run_id not in started]


def stop_pool(pool: ProcessPoolExecutor, stop: Any, interrupt: bool = True, grace_s: float = GRACE_S) -> None:
    """On Ctrl-C or SIGTERM: no queued run starts; running ones are interrupted (``interrupt``:
    a SIGINT each, unless a Ctrl-C at the terminal already reached them) and get a moment to
    write their summaries, then any pool process still alive is killed, so the sweep exits now
    and leaves no process behind."""
    stop.set()
    # ProcessPoolExecutor has no public way to stop its processes before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    if interrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)


def drain(
    futures: dict[Future, PlannedRun],
    progress: Progress,
    record: Recorder,
    events: Any,
    started: set[str] | None = None,
) -> list[PlannedRun]:
    """Wait for the runs, forwarding progress events; returns the runs lost to a broken pool."""
    by_id = {run.run_id: run for run in futures.values()}
    pending = set(futures)
    lost = []
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        forward_events(events, by_id, progress, started)
        for future in done:
            run = futures[future]
            try:
                status, error = future.result()
            except BrokenProcessPool:
                lost.append(run)
                continue
            except Exception as lost_result:  # noqa: BLE001 - e.g. a result that cannot travel back: the run failed
                status, error = "failed", f"{type(lost_result).__name__}: {lost_result}"
            if status != NOT_STARTED:
                record(run, status, error)
    forward_events(events, by_id, progress, started)
    return lost


def forward_events(events: Any, by_id: dict[str, PlannedRun], progress: Progress, started: set[str] | None) -> None:
    if events is None:
        return
    while True:
        try:
            kind, run_id, step, accuracy = events.get_nowait()
        except queue.Empty:
            return
        if kind == "start" and run_id in by_id:
            if started is not None:
                started.add(run_id)
            progress.start(by_id[run_id])
        elif kind == "row":
            progress.row(run_id, step, accuracy)


@contextmanager
def ray_connection(config: ExperimentConfig) -> Iterator[None]:
    """One Ray connection for every Ray run of the sweep (each run reuses an initialized Ray)."""
    from byzsgd.runtime.cluster import start_ray

    owns = start_ray(config)
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()
