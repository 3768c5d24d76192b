"""The layout keeps its promises: imports point one way (the import-linter contract in pyproject.toml),
no module imports another in a circle, and no module grows past one concept's size."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_LOOSE_MODULES = 8  # directly in serve/, beside the sub-packages


def test_the_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("serve", "backends", cache_dir=None)  # TYPE_CHECKING imports included
    circles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
               if a != b and graph.chain_exists(importer=b, imported=a)]
    assert circles == []


def test_every_module_stays_under_the_size_of_one_concept():
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for package in ("serve", "backends") for path in (ROOT / package).rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_serve_shows_its_design_in_packages_not_loose_modules():
    loose = sorted(p.name for p in (ROOT / "serve").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_MODULES, loose
