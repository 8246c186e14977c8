"""The one model inventory (icg.models.inventory): its rule for "installed", and every front end that
shows models rendering it (``icg models``, ``icg doctor``, ``GET /icg/v1/models`` / the Models panel, the
model dropdowns)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from icg.api import describe_models, mount_api
from icg.cli import main
from icg.models import importer
from icg.models.inventory import captioner_ids, inventory, model_status, supplied_kinds, tree_size
from icg.models.manager import ModelManager, RuntimeConfig
from icg.ui.service import CaptionService
from tests.model_fixtures import fixture_models, use_test_registry


@pytest.fixture(scope="module")
def fx():
    return fixture_models()


@pytest.fixture
def states(fx, tmp_path, monkeypatch):
    """A models folder with one model in each state (the test registry's ids):

    tiny-clip       all files present
    tiny-tokenizer  a file missing
    tiny-vocabulary its original pickles, waiting for conversion
    tiny-prefix     its own files present, but it requires tiny-tokenizer
    tiny-sbg        nothing there
    tiny-manual     nothing there, and manual-only
    my-own          a local CLIP-prefix folder (imported; it names its own CLIP folder)
    my-sbg          a local captioner folder (an SBG generator the user copied in)
    """
    use_test_registry(monkeypatch, tmp_path)
    root = tmp_path / "models"
    monkeypatch.setenv("ICG_HOME", str(root))
    (root / "tiny-clip").mkdir(parents=True)
    shutil.copy(fx["clip_bin"], root / "tiny-clip" / "open_clip_pytorch_model.bin")
    (root / "tiny-tokenizer").mkdir()
    shutil.copy(Path(fx["tokenizer_dir"]) / "tokenizer.json", root / "tiny-tokenizer")
    (root / "tiny-vocabulary").mkdir()
    for key in ("all_labels_pkl", "encyclopedia_pkl"):
        shutil.copy(fx[key], root / "tiny-vocabulary")
    importer.import_model([fx["clip_prefix_pt"]], "tiny-prefix", root, tokenizer=fx["tokenizer_dir"])
    importer.import_model([fx["clip_prefix_pt"]], "my-own", root, clip=fx["clip_dir"])
    shutil.copytree(fx["sbg_generator_dir"], root / "my-sbg")
    (root / "not-a-model").mkdir()  # neither listed nor offered
    (root / "cache").mkdir()
    return root


def test_the_rule_for_installed(states):
    rows = {r.id: r for r in inventory(states)}
    assert list(rows) == [
        "tiny-prefix",
        "tiny-sbg",
        "tiny-vocabulary",
        "tiny-tokenizer",
        "tiny-clip",
        "tiny-manual",
        "my-own",
        "my-sbg",
    ]
    clip, tok, vocab = rows["tiny-clip"], rows["tiny-tokenizer"], rows["tiny-vocabulary"]
    assert clip.installed and clip.missing == () and clip.size_bytes == tree_size(states / "tiny-clip")
    assert not tok.installed and tok.missing == ("tiny-tokenizer/tokenizer_config.json",)
    assert tok.note == "partly downloaded"
    # originals waiting for conversion are converted locally on first use: installed
    assert vocab.installed and vocab.note == "downloaded, converted on first use"
    prefix = rows["tiny-prefix"]  # its own files are there, its tokenizer is not complete
    assert prefix.requires == ("tiny-clip", "tiny-tokenizer")
    assert not prefix.installed and prefix.missing == ("tiny-tokenizer/tokenizer_config.json",)
    assert prefix.note == "needs tiny-tokenizer (not installed)" and not prefix.manual_only
    sbg = rows["tiny-sbg"]
    assert not sbg.installed and "tiny-sbg/model.safetensors" in sbg.missing
    assert sbg.requires == ("tiny-clip", "tiny-tokenizer", "tiny-vocabulary")
    assert sbg.expected_bytes is None and sbg.size_bytes == 0
    assert sbg.source.endswith("someone/tiny-sbg/resolve/main/config.json")
    manual = rows["tiny-manual"]
    assert manual.manual_only and manual.missing == ("tiny-manual/manual.pt",)
    assert "python -m icg import FILE --as tiny-manual" in manual.note
    mine = rows["my-own"]  # its CLIP is a folder, its tokenizer the default gpt2-tokenizer (no such id here)
    assert (mine.kind, mine.registered, mine.installed, mine.requires) == ("clip-prefix", False, True, ())
    own = rows["my-sbg"]
    assert (own.kind, own.registered, own.installed, own.source) == ("sbg", False, True, "local")
    assert own.path == states / "my-sbg" and own.size_bytes == tree_size(states / "my-sbg") > 0
    # a requirement the runtime supplies (--tokenizer) is not required
    supplied = supplied_kinds(RuntimeConfig(tokenizer="x"))
    with_tokenizer = model_status("tiny-prefix", states, supplied=supplied)
    assert with_tokenizer.installed and with_tokenizer.requires == ("tiny-clip",)


def test_every_front_end_renders_the_inventory(states, capsys):
    rows = inventory(states)
    by_id = {r.id: r for r in rows}

    # icg models (JSON and text)
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "models_dir": str(states),
        "models": [r.to_dict() for r in rows],
    }
    assert main(["models"]) == 0
    text = capsys.readouterr().out.splitlines()
    for row in rows:
        [line] = [t for t in text if t.startswith(row.id + " ")]
        assert line.split()[1:3] == [row.kind, "present" if row.installed else "missing"]

    # icg doctor
    assert main(["doctor", "--device", "cpu"]) == 0
    doctor = capsys.readouterr().out.splitlines()
    for row in rows:
        assert f"  {row.id:<28} {'present' if row.installed else 'missing'}" in doctor

    # the dropdowns and GET /icg/v1/models (the WebUI's Models panel renders that payload)
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(states)))
    service = CaptionService(manager, default_model="tiny-prefix")
    choices = service.model_choices()
    assert choices == captioner_ids(rows) == [
        "tiny-prefix",
        "tiny-sbg",
        "tiny-manual",
        "my-own",
        "my-sbg",
    ]
    payload = describe_models(service)
    assert payload["default"] == "tiny-prefix" and payload["models_dir"] == str(states)
    assert [m["id"] for m in payload["models"]] == choices
    for model in payload["models"]:
        expected = by_id[model["id"]].to_dict()
        expected["default"] = model["id"] == "tiny-prefix"
        assert model == expected
    app = FastAPI()
    mount_api(app, service)
    response = TestClient(app).get("/icg/v1/models")
    assert response.status_code == 200 and response.json()["models"] == payload["models"]


def test_extra_paths_and_loaded_models(states, fx):
    rows = inventory(states, extra=[fx["clip_prefix_pt"], "/no/such/model.pt"], loaded=["my-sbg"])
    by_id = {r.id: r for r in rows}
    given = by_id[fx["clip_prefix_pt"]]
    assert given.kind == "clip-prefix" and not given.registered and given.path == Path(fx["clip_prefix_pt"])
    gone = by_id["/no/such/model.pt"]
    assert not gone.installed and gone.note == "not found" and gone.missing == ("/no/such/model.pt",)
    assert by_id["my-sbg"].loaded and not by_id["tiny-prefix"].loaded


def test_an_empty_or_absent_models_folder(tmp_path, monkeypatch):
    use_test_registry(monkeypatch, tmp_path)
    rows = inventory(tmp_path / "absent")
    assert [r.installed for r in rows] == [False] * 6  # the vocabulary needs nothing, but is not there
    assert all(r.registered for r in rows)


def test_the_dropdown_choices_do_not_wait_for_a_running_job(states):
    manager = ModelManager(RuntimeConfig(device="cpu", models_dir=str(states)))
    service = CaptionService(manager, default_model="tiny-prefix")
    inside, release, over = threading.Event(), threading.Event(), threading.Event()

    def job():
        with manager.session():
            inside.set()
            release.wait(30)
        over.set()

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert inside.wait(30)
        assert "my-sbg" in service.model_choices()
        assert not over.is_set()  # answered while the job still held the manager's lock
    finally:
        release.set()
        worker.join(30)
