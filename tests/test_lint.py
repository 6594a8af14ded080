"""The code passes the project's ruff configuration (pyproject.toml), as CI checks with every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; it is in the dev extra: pip install -e '.[dev]'")
    out = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_would_catch_an_unused_import(tmp_path):
    """The check can fail: a file with an unused import is reported under the same configuration."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    out = subprocess.run([shutil.which("ruff") or sys.executable, "check", "--config", str(ROOT / "pyproject.toml"),
                          str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "F401" in out.stdout
