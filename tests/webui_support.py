"""Shared set-up for the WebUI and API tests: fixture models written once per test process, a models
folder holding a local SBG model and the vocabulary, the fake WebUI on ``sys.path``, and script loading."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "webui_fakes"
SCRIPTS = ROOT / "scripts"
SBG_LOCAL = "sbg-tiny"

_lock = threading.Lock()
_files: dict[str, str] | None = None


def fixture_files() -> dict[str, str]:
    """``tests.fixtures.write_all`` into a temporary folder, once per test process (it takes seconds)."""
    global _files
    with _lock:
        if _files is None:
            from tests.fixtures import write_all

            folder = Path(tempfile.mkdtemp(prefix="icg-webui-fixtures-"))
            atexit.register(shutil.rmtree, folder, True)
            _files = write_all(folder / "files")
        return _files


def models_folder(root: Path, files: dict[str, str]) -> Path:
    """A models folder with the fixture SBG generator as the local model ``sbg-tiny`` and the fixture
    vocabulary installed as ``sbg-vocabulary`` (from its pickles, converted on first use)."""
    root = Path(root)
    vocab = root / "sbg-vocabulary"
    vocab.mkdir(parents=True, exist_ok=True)
    for key in ("all_labels_pkl", "encyclopedia_pkl"):
        shutil.copy(files[key], vocab)
    if not (root / SBG_LOCAL).exists():
        shutil.copytree(files["sbg_generator_dir"], root / SBG_LOCAL)
    return root


def make_manager(files: dict[str, str], models_dir: Path, **runtime):
    """A ``ModelManager`` over the fixture CLIP and tokenizer, with no downloads."""
    from icg.models.manager import ModelManager, RuntimeConfig

    values = dict(
        device="cpu",
        dtype="auto",
        models_dir=str(models_dir),
        allow_download=False,
        clip=files["clip_dir"],
        tokenizer=files["tokenizer_dir"],
    )
    values.update(runtime)
    return ModelManager(RuntimeConfig(**values))


def write_images(folder: Path, n: int, size: tuple[int, int] = (48, 40)) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", size, ((60 * i) % 256, 120, 200)).save(path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def fake_webui(**flags) -> Iterator[ModuleType]:
    """The fake ``modules`` package importable, reset with ``flags``; removed from ``sys.modules`` after."""
    sys.path.insert(0, str(FAKES))
    try:
        import modules

        modules.reset(**flags)
        yield modules
    finally:
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(FAKES))


def load_script(name: str) -> ModuleType:
    """Execute ``scripts/<name>.py`` the way the WebUI does (a fresh module each time)."""
    path = SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"icg_test_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_base64(size: tuple[int, int] = (40, 32), color=(200, 30, 30)) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
