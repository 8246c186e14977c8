"""The WebUI boundary: only icg/webui/host.py (and scripts/) may import the WebUI's ``modules`` or ``launch``;
scripts/ only register callbacks; the adapter and the API import nothing heavy at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_PACKAGES = {"modules", "launch"}
ADAPTER = ROOT / "icg" / "webui" / "host.py"


def host_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``modules``/``launch`` imports in ``path``: import statements, and string literals handed to
    ``importlib.import_module`` / ``__import__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", None) or getattr(func, "id", None)
            if called in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names = [first.value]
                elif isinstance(first, ast.JoinedStr) and first.values:
                    head = first.values[0]
                    if isinstance(head, ast.Constant) and isinstance(head.value, str):
                        names = [head.value]
        for name in names:
            if name.split(".")[0] in HOST_PACKAGES:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    return found


def test_only_the_adapter_imports_the_webui():
    offenders = []
    for path in sorted((ROOT / "icg").rglob("*.py")):
        if path != ADAPTER:
            offenders += host_imports(path)
    assert offenders == []
    assert host_imports(ADAPTER), "the scan must see the adapter's own WebUI imports"


def test_the_scan_catches_every_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import modules.shared\nfrom modules import scripts\nimport launch\n"
        "import importlib\nimportlib.import_module('modules.devices')\n"
        "importlib.import_module(f'modules.{x}')\nfrom icg import modules_like\n",
        encoding="utf-8",
    )
    found = [line.split(": ", 1)[1] for line in host_imports(sample, tmp_path)]
    assert found == ["modules.shared", "modules", "launch", "modules.devices", "modules."]


def test_scripts_only_register_callbacks():
    """scripts/*.py hold imports and registration calls: no functions, classes or loops of their own."""
    for path in sorted((ROOT / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.If)
            assert isinstance(node, allowed), f"{path.name}:{node.lineno}: {type(node).__name__}"
            if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant):
                assert isinstance(node.value, ast.Call), f"{path.name}:{node.lineno}"


def test_adapter_and_api_import_cheaply():
    probe = (
        "import sys, icg.api, icg.jobs\n"
        "heavy = {'torch', 'gradio', 'transformers', 'open_clip', 'modules', 'launch'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_adapter_imports_no_webui_module_at_import_time():
    """``import icg.webui`` outside the WebUI works (every ``modules`` import happens when used)."""
    probe = (
        "import sys, icg.webui\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('modules', 'launch')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
