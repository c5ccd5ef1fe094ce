"""The layout keeps its promises: the producer side never builds the workers' app, no
module imports one that imports it back, old import paths still work."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.support.cluster import REPO


def test_the_producer_side_imports_neither_the_workers_app_nor_their_tasks() -> None:
    code = (
        "import sys\n"
        "import curator_worker, curator_worker.backends.celery\n"
        "import producer.cli, producer.submit, producer.wait, producer.control\n"
        "import producer.clients, producer.rescue, producer.publish, producer.job_views\n"
        "print(sorted(m for m in ('curator_worker.worker.app', 'curator_worker.worker.tasks')"
        " if m in sys.modules))\n"
    )
    # a CURATOR_* value the workers' app would refuse when built: importing must not read it
    env = {"PATH": "/usr/bin:/bin", "CURATOR_VISIBILITY_TIMEOUT": "not-a-number"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_earlier_import_paths_give_the_moved_modules_themselves() -> None:
    code = (
        "import importlib, curator_worker\n"
        "from curator_worker.earlier_import_paths import MOVED\n"
        "for old, new in sorted(MOVED.items()):\n"
        "    alias, home = importlib.import_module(old), importlib.import_module(new)\n"
        "    assert alias is home, old\n"
        "    assert home.__spec__.name == new, (old, home.__spec__.name)\n"
        "from curator_worker.tasks import process_batch\n"
        "from curator_worker.worker.tasks import process_batch as moved\n"
        "assert process_batch is moved\n"
        "import curator_worker.app as a\n"
        "print(type(a.app).__name__, len(MOVED))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "Celery"


def test_a_module_that_never_existed_is_still_missing() -> None:
    import importlib

    import pytest

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("curator_worker.no_such_module")


def _modules() -> dict[str, Path]:
    found = {}
    for path in (REPO / "curator_worker").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported_at_load(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """The project modules a module imports when it is loaded: module-level statements
    (inside ``if``/``try`` too), not under ``TYPE_CHECKING``, not inside functions."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody,
                              *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                found.update(submodules)
                if len(submodules) < len(node.names):  # names defined by the module itself
                    found.add(node.module)

    visit(tree.body)
    return found & set(modules)


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    graph = {name: _imported_at_load(ast.parse(path.read_text()), modules) - {name}
             for name, path in modules.items()}
    assert len(graph) > 60 and graph["curator_worker.worker.tasks"], "the scan finds imports"

    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                walk(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, f"import cycles: {cycles}"


def test_python_dash_m_runs_a_moved_module_under_its_earlier_name() -> None:
    for name in ("curator_worker.worker_cli", "curator_worker.worker.cli"):
        done = subprocess.run([sys.executable, "-m", name, "--help"], cwd=REPO,
                              env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, (name, done.stderr)
        assert "Start a curator worker node" in done.stdout, name


def test_unit_tests_start_no_server() -> None:
    """Unit tests run with nothing started: a test that needs Redis, worker nodes or an S3
    server belongs in tests/integration."""
    servers = re.compile(r"\b(redis_server|private_redis|worker_nodes|cluster_settings|"
                         r"s3_server|s3_env|RedisServer)\b")
    offenders = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests/unit").rglob("*.py")
                       if path.name != "test_layout.py" and servers.search(path.read_text()))
    assert not offenders, offenders


#: Modules allowed past :data:`MAX_MODULE_LINES`, each with its reason.
LONG_MODULES = {
    "curator_worker/contract/pipeline.py": "Source, Filter, Sink and Pipeline refer to each "
                                           "other, as in physicsnemo-curator's core.base",
    "producer/cli.py": "the curator-submit and curator-jobs commands: mostly click options "
                       "with their --help text",
}
MAX_MODULE_LINES = 450


def test_no_module_grows_past_the_limit_without_a_reason() -> None:
    too_long = {}
    for folder in ("curator_worker", "producer"):
        for path in (REPO / folder).rglob("*.py"):
            name = str(path.relative_to(REPO))
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES and name not in LONG_MODULES:
                too_long[name] = lines
    assert not too_long, f"split these (or say why not in LONG_MODULES): {too_long}"
