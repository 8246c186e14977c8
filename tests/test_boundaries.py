"""Import rules: `import icg` and the inference path stay cheap and host-free."""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"torch", "gradio", "transformers", "open_clip", "modules", "launch", "fastapi"}


def imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_icg_is_cheap():
    assert not imported_after("import icg") & HEAVY


def test_cli_parser_builds_without_heavy_imports():
    assert not imported_after("import icg.cli; icg.cli.build_parser()") & HEAVY


def test_inference_entry_points_do_not_import_gradio_or_training():
    loaded = imported_after("import icg.pipeline, icg.models.manager, icg.models.loading")
    assert not loaded & {"gradio", "modules", "launch"}
    probe = (
        "import sys, icg.pipeline; print([m for m in sys.modules if m.startswith(('icg.train', 'icg.eval'))])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
