"""Model kinds are records: a new captioner kind is one module and one registration.

The toy kind below lives only in this file. Registering it makes its folders detectable, describable,
importable and loadable through the ordinary model manager and pipeline; unregistering it restores the
registry. Nothing in ``icg`` knows the toy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from icg.captioners import kinds
from icg.captioners.kinds import ImportJob, ModelKind
from icg.captioners.result import CaptionResult
from icg.config import DecodingConfig
from icg.errors import CheckpointError, ConfigError
from icg.imaging import load_image
from icg.models import importer, loading
from icg.models.manager import ModelManager, RuntimeConfig
from icg.pipeline import caption_images
from tests.model_fixtures import fixture_models, write_image

TOY_FORMAT = "icg-test-toy"
TOY_CONFIG = "toy.json"


class ToyCaptioner:
    """Captions each feature row with the words its sign pattern picks: fixed, and derived from the
    features, so different images get different captions."""

    kind = "toy"

    def __init__(self, words: list[str], model_id: str, clip_spec) -> None:
        self.words = words
        self.model_id = model_id
        self.clip_spec = clip_spec
        self.normalize = True
        self.decoding = DecodingConfig()

    def to(self, device):
        return self

    def caption_features(self, features, decoding=None, options=None) -> list[CaptionResult]:
        results = []
        for row in features:
            picked = [w for w, value in zip(self.words, row.tolist()) if value > 0] or ["nothing"]
            results.append(CaptionResult(caption="toy: " + " ".join(picked), model=self.model_id))
        return results


def _config(path: Path) -> dict | None:
    file = path / TOY_CONFIG
    data = json.loads(file.read_text(encoding="utf-8")) if path.is_dir() and file.is_file() else None
    return data if isinstance(data, dict) and data.get("format") == TOY_FORMAT else None


def _load(name: str, resolved, manager) -> ToyCaptioner:
    from icg.clip_encoder import spec_from_folder

    data = _config(resolved.path)
    return ToyCaptioner(data["words"], name, spec_from_folder(data["clip"]))


def _import(paths: Sequence[Path], out: Path, job: ImportJob) -> str:
    (src,) = paths
    data = _config(src)
    (out / TOY_CONFIG).write_text(json.dumps(data), encoding="utf-8")
    return f"toy captioner with {len(data['words'])} words"


TOY = ModelKind(
    name="toy",
    title="toy captioner",
    formats="a toy folder",
    detect=lambda path: _config(path) is not None,
    describe=lambda folder: f"toy captioner ({len(_config(folder)['words'])} words)",
    load=_load,
    recognise=lambda paths, probe: len(paths) == 1 and _config(paths[0]) is not None,
    import_files=_import,
)


@pytest.fixture
def toy_kind():
    before = kinds.names()
    kinds.register(TOY)
    yield TOY
    kinds.unregister(TOY.name)
    assert kinds.names() == before


def _toy_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    words = ["red", "green", "blue", "round", "square", "big", "small", "bright"]
    data = {"format": TOY_FORMAT, "words": words, "clip": fixture_models()["clip_dir"]}
    (folder / TOY_CONFIG).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_a_registered_toy_kind_is_detected_loaded_and_captions_through_the_pipeline(toy_kind, tmp_path):
    folder = _toy_folder(tmp_path / "elsewhere" / "my-toy")
    assert loading.detect_kind(folder) == "toy"
    assert loading.describe_folder(folder) == ("toy", "toy captioner (8 words)")
    assert "toy" in kinds.names(captioners_only=True)

    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(tmp_path / "models")))
    captioner = manager.captioner(str(folder))
    assert isinstance(captioner, ToyCaptioner)
    images = [write_image(tmp_path / "a.png", seed=1), write_image(tmp_path / "b.png", seed=2)]
    results = caption_images(manager, str(folder), images)
    assert [r.source for r in results] == [str(p) for p in images]
    for result in results:
        assert result.caption.startswith("toy: ") and result.model == str(folder)
    features = manager.clip(captioner.clip_spec).encode_images([load_image(images[0])], normalize=True)
    assert captioner.caption_features(features)[0].caption == results[0].caption


def test_a_toy_model_is_imported_and_found_by_name_in_the_models_folder(toy_kind, tmp_path):
    src = _toy_folder(tmp_path / "download")
    root = tmp_path / "models"
    result = importer.import_model([src], "toy-one", root)
    assert (result.kind, result.details, result.files) == ("toy", "toy captioner with 8 words", ("toy.json",))
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(root)))
    assert loading.resolve_model("toy-one", manager).kind == "toy"
    assert manager.captioner("toy-one").model_id == "toy-one"


def test_unregistering_the_toy_kind_forgets_its_folders(tmp_path):
    folder = _toy_folder(tmp_path / "my-toy")
    kinds.register(TOY)
    assert loading.detect_kind(folder) == "toy"
    kinds.unregister("toy")
    assert "toy" not in kinds.names()
    with pytest.raises(CheckpointError, match="not a model folder ICG knows"):
        loading.detect_kind(folder)
    with pytest.raises(ConfigError, match="can't tell what this folder holds"):
        importer.detect_import_kind([folder])


def test_a_kind_name_is_registered_once(toy_kind):
    with pytest.raises(ConfigError, match="'toy' is registered already"):
        kinds.register(ModelKind(name="toy", title="another toy", formats="-"))
    with pytest.raises(ConfigError, match="unknown model kind 'nope'"):
        kinds.get("nope")


def test_the_builtin_kinds_are_the_one_list_of_kinds():
    from icg.models.registry import load_registry

    assert kinds.names() == ("clip-prefix", "sbg", "sbg-vocabulary", "tokenizer", "clip")
    assert kinds.names(captioners_only=True) == ("clip-prefix", "sbg")
    assert importer.import_kinds() == ("clip-prefix", "sbg", "sbg-vocabulary")
    assert {e.kind for e in load_registry().values()} <= set(kinds.names())


def test_kinds_import_without_the_model_layer_or_torch():
    """The kinds registry and the built-in kind modules import cheaply and never import
    ``icg.models.manager`` (no cycle between icg.models, icg.sbg and the captioners); the built-in
    kinds keep their order whichever kind module is imported first."""
    code = (
        "import sys, icg.sbg.kind; from icg.captioners import kinds; names = kinds.names();"
        "bad = [m for m in ('torch', 'transformers', 'icg.models.manager', 'icg.models.loading',"
        " 'icg.sbg.captioner', 'icg.captioners.prefix') if m in sys.modules];"
        "print(names, bad); sys.exit(1 if bad or names[:2] != ('clip-prefix', 'sbg') else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_registry_accepts_a_kind_once_it_is_registered(toy_kind):
    from icg.models.registry import parse_registry

    entry = {
        "id": "toy-model",
        "display_name": "Toy",
        "kind": "toy",
        "description": "a toy",
        "files": ["toy.json"],
        "sources": [{"kind": "url", "url": "https://example.invalid/toy.json", "filename": "toy.json"}],
    }
    assert parse_registry({"schema": 1, "models": [entry]})["toy-model"].kind == "toy"
    kinds.unregister("toy")
    with pytest.raises(ConfigError, match="unknown kind 'toy'"):
        parse_registry({"schema": 1, "models": [entry]})
