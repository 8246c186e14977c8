"""The quick development profile that README.md documents selects what it says it does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU, BROWSER, SLOW = "tests/test_webui_gpu.py", "tests/test_browser.py", "tests/test_batch_resume.py"
ORDINARY = "tests/test_bench.py"  # mostly quick tests


def collected(*args: str) -> set[str]:
    """The test modules ``python -m pytest ARGS`` would run, of one module of each kind."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args, GPU, BROWSER, SLOW, ORDINARY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return {line.split("::")[0] for line in out.splitlines() if "::" in line}


def test_the_readme_quick_profile_leaves_out_gpu_slow_and_browser_tests():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    [expression] = re.findall(r'python -m pytest -m "([^"]+)"', readme)
    assert collected("-m", expression) == {ORDINARY}


@pytest.mark.slow  # two pytest processes
def test_a_command_line_marker_expression_replaces_the_one_in_addopts():
    assert collected() == {BROWSER, SLOW, ORDINARY}  # addopts: -m 'not gpu'
    assert GPU in collected("-m", "not slow")  # hence the full expression in README
