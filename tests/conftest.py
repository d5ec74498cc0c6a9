"""Shared test helpers: the repository root and the loader of the benchmark modules.

The tests import the installed package; `benchmarks` is not installed, so `load_benchmark` appends the repository root
to the end of `sys.path` (the installed `ggam_layers` still comes first) and imports `benchmarks.<name>`.
"""
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(os.environ.get('GGAM_REPO_ROOT') or Path(__file__).resolve().parents[1])


def load_benchmark(name: str) -> ModuleType:
    """The module `benchmarks.<name>` of the repository."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    return importlib.import_module(f'benchmarks.{name}')


def benchmark_command(name: str, *args: str) -> list:
    """The command line that runs `benchmarks.<name>` (from the repository root, `cwd=REPO_ROOT`)."""
    return [sys.executable, '-m', f'benchmarks.{name}', *args]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
