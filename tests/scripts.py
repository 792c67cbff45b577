"""Import a repository script (tools/*.py, benchmarks/*/*.py) as a module, for tests that call
its functions directly instead of through a subprocess."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """A fresh module from REPO/relative_path, registered in sys.modules before it runs (its
    dataclasses look their module up by name)."""
    path = REPO / relative_path
    name = "script_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
