"""Import paths of earlier releases, kept working after modules moved into subpackages.

``import curator_worker.tasks`` (or ``celery -A curator_worker.app``, the documented worker
command) gives the module at its new home: the same module object, not a copy, so
patching an attribute through either name patches it for both. New code imports from the
new homes; this table is the only place the old names live.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType

#: Old module name -> where the module lives now.
MOVED: dict[str, str] = {
    "curator_worker.app": "curator_worker.worker.app",
    "curator_worker.tasks": "curator_worker.worker.tasks",
    "curator_worker.lease": "curator_worker.worker.lease",
    "curator_worker.log_context": "curator_worker.worker.log_context",
    "curator_worker.worker_cli": "curator_worker.worker.cli",
    "curator_worker.pipeline": "curator_worker.contract.pipeline",
    "curator_worker.spec": "curator_worker.contract.spec",
    "curator_worker.planning": "curator_worker.contract.planning",
}


class EarlierImportPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the modules of :data:`MOVED` under their old names (consulted after the
    normal finders, so it never shadows a real module)."""

    def __init__(self) -> None:
        self._home_specs: dict[str, ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        # the import system sets the alias's spec on the module: kept to put back
        self._home_specs[module.__name__] = module.__spec__
        return module

    def get_code(self, fullname: str) -> CodeType | None:
        """The moved module's code, for ``python -m <old name>`` (which runs it as
        ``__main__``)."""
        home = importlib.util.find_spec(MOVED[fullname])
        loader = home.loader if home is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(MOVED[fullname]) if get_code is not None else None

    def is_package(self, fullname: str) -> bool:
        return False

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._home_specs.get(module.__name__, module.__spec__)


def install() -> None:
    """Add the finder to :data:`sys.meta_path` once (importing :mod:`curator_worker` does)."""
    if not any(isinstance(f, EarlierImportPaths) for f in sys.meta_path):
        sys.meta_path.append(EarlierImportPaths())
