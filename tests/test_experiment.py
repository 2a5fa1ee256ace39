"""The assembly layer: a run is planned once, in the driver; config is data; one bus."""

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from byzsgd import bus, experiment
from byzsgd.experiment import assemble
from byzsgd.faults import FaultInjector
from byzsgd.protocols import detox
from byzsgd.runner import run_experiment
from byzsgd.runtime import actors as ray_actors
from byzsgd.runtime import local
from byzsgd.runtime import ray as ray_runtime
from byzsgd.training import Workload
from tests.conftest import make_config

PACKAGE = Path(experiment.__file__).parent


def detox_config(**sections):
    return make_config(
        protocol="detox",
        nodes={"n_ps": 1, "f_ps": 0, "n_w": 9, "f_w": 2},
        aggregator={"name": "median"},
        attack={"name": "signflip"},
        **sections,
    )


def test_config_is_data_it_does_not_import_the_protocols():
    code = "import byzsgd.config, sys; assert 'byzsgd.protocols' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {  # imports under `if TYPE_CHECKING:` never run
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):  # every import that runs, also inside functions
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {name for name in names if name in modules and name != module}
    return found


def test_no_import_cycle_among_the_modules():
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: imports_of(p, m, set(paths)) for m, p in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, trail):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(target) :] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_plan_is_small_plain_data_and_every_process_agrees_on_the_roster():
    config = make_config(attack={"name": "signflip", "rotate_every": 3})
    plan = assemble(config)
    shipped = pickle.dumps(plan)
    assert len(shipped) < 20_000  # config + roster + ids: no model, no data, no tensors
    copy = pickle.loads(shipped)
    for round_ in range(12):
        assert copy.roster.workers.members(round_) == plan.roster.workers.members(round_)
    assert FaultInjector(copy).byzantine == FaultInjector(plan).byzantine == plan.roster.byzantine


def test_detox_worst_case_search_runs_once_per_run_not_once_per_process(monkeypatch):
    searches = []

    def counting(assignment, q):
        searches.append(q)
        return worst_case(assignment, q)

    worst_case = detox.worst_case
    monkeypatch.setattr(detox, "worst_case", counting)
    monkeypatch.setattr(detox, "SEARCHED", {})
    config = detox_config(ray={"actors": 3})
    plan = assemble(config)
    in_driver = len(searches)
    assert in_driver >= 1
    # Each Ray actor unpickles the plan in a fresh process (an empty cache) and builds its nodes.
    workload = Workload(config)
    for group in plan.groups:
        monkeypatch.setattr(detox, "SEARCHED", {})
        actor_plan = pickle.loads(pickle.dumps(plan))
        injector = FaultInjector(actor_plan)
        nodes = actor_plan.make_nodes(group, lambda n, injector=injector: injector.workload_for(n, workload))
        assert set(nodes) == set(group)
    assert len(searches) == in_driver


def test_a_run_is_assembled_once_and_no_actor_parses_a_config(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("byzsgd.runner.assemble", lambda config: calls.append(config) or assemble(config))
    run_experiment(make_config(steps=4, eval_every=2, output_dir=str(tmp_path)))
    assert len(calls) == 1
    # The Ray actors (NodeActor, InjectorActor) receive the driver's plan: nothing there parses or plans.
    for module in (ray_actors, ray_runtime):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not names & {"config_from_dict", "load_config", "parse_config", "assemble"}


def test_both_runtimes_move_messages_through_the_one_bus():
    assert local.Bus is bus.Bus and ray_actors.Bus is bus.Bus
    assert local.StalledError is bus.StalledError is ray_runtime.StalledError
