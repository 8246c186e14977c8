"""The cold-start suite: models written once in the installed formats, fresh processes timed by phase."""

from __future__ import annotations

import json

import pytest

from icg.bench import SUITES, coldstart


def test_the_suite_is_registered():
    assert SUITES["coldstart"] == "icg.bench.coldstart:bench_coldstart"


def test_synthetic_gpt2_tokenizer_loads_like_gpt2s(tmp_path):
    from transformers import AutoTokenizer

    coldstart.write_gpt2_tokenizer(tmp_path / "tok", size=600)
    names = {p.name for p in (tmp_path / "tok").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "config.json"} <= names
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tok) == 600 and tok.convert_ids_to_tokens(599) == "<|endoftext|>"
    ids = tok.encode("a dog runs")
    assert tok.decode(ids) == "a dog runs"


@pytest.mark.slow
def test_models_are_written_once_and_a_cold_start_is_split_into_phases(tmp_path, monkeypatch):
    monkeypatch.setenv(coldstart.CACHE_ENV, str(tmp_path / "cache"))
    folder = coldstart.ensure_models("tiny")
    assert folder == coldstart.cache_folder("tiny") and json.loads((folder / coldstart.COMPLETE).read_text())
    stamp = (folder / "prefix" / "model.safetensors").stat().st_mtime_ns
    assert coldstart.ensure_models("tiny") == folder
    assert (folder / "prefix" / "model.safetensors").stat().st_mtime_ns == stamp  # never re-written

    argv = coldstart.commands(folder, "tiny", tokens=4)["caption"]
    work = tmp_path / "work"
    work.mkdir()
    runs = {path: coldstart.cold_start(argv, path, work) for path in coldstart.PATHS}
    for marks in runs.values():
        assert marks["spawn"] < marks["cli"] < marks["models"] <= marks["stdout"]
        assert set(marks["modules"]) == {"cli", "models", "printed"}
        assert "torch" not in marks["modules"]["cli"] and "torch" in marks["modules"]["models"]
    assert runs["legacy"]["caption"] == runs["new"]["caption"]
    marks = runs["new"]
    imports = coldstart.run_imports(marks, work)
    assert len(imports) == 2 and imports[0] > 0 and imports[1] >= 0
    phases = coldstart.split(marks, imports)
    assert set(phases) == {"total", "startup", "import", "load", "work"}
    assert all(v >= 0 for v in phases.values()) and phases["total"] >= phases["startup"] + phases["work"]
    assert phases["import"] == sum(imports)
    table = {p: coldstart.split(runs[p], imports) for p in coldstart.PATHS}
    assert coldstart.side_by_side("caption", table).startswith("caption: total ")


def test_a_mark_lists_the_modules_the_first_time_only(tmp_path, monkeypatch):
    from icg import phases

    out = tmp_path / "phases.txt"
    monkeypatch.setenv(phases.ENV, str(out))
    monkeypatch.setattr(phases, "_listed", set())
    for _ in range(3):  # a folder's batches each reach the "models" mark
        phases.mark("models", modules=True)
    phases.mark("printed", modules=True)
    names = [line.split("\t", 1)[0] for line in out.read_text(encoding="utf-8").splitlines()]
    assert names == ["models", "modules", "models", "models", "printed", "modules"]
