"""The packaged model registry and its validation."""

from __future__ import annotations

import copy
import json

import pytest

from icg.errors import ConfigError, ModelNotFound
from icg.models import registry
from icg.models.registry import ModelEntry, ModelSource, get_entry, load_registry, parse_registry

SHA = "a" * 64


def _entry(**overrides):
    data = {
        "id": "tiny",
        "display_name": "Tiny",
        "kind": "tokenizer",
        "description": "a test entry",
        "files": ["a.json"],
        "sources": [{"kind": "url", "url": "https://example.invalid/a.json", "filename": "a.json"}],
    }
    data.update(overrides)
    return data


def _registry(*entries):
    return {"schema": 1, "models": list(entries)}


def test_packaged_registry_loads_with_required_entries():
    entries = load_registry()
    for model_id in (
        "clip-prefix-flickr8k",
        "sbg-flickr8k",
        "sbg-vocabulary",
        "gpt2-tokenizer",
        "clip-vit-l-14-openai",
        "clipcap-coco-mlp",
        "clipcap-conceptual-mlp",
    ):
        assert model_id in entries
        entry = entries[model_id]
        assert isinstance(entry, ModelEntry)
        assert entry.display_name and entry.description
    assert load_registry() is not entries  # a fresh dict each call


def test_packaged_facts():
    entries = load_registry()
    prefix = entries["clip-prefix-flickr8k"]
    assert prefix.kind == "clip-prefix"
    assert dict(prefix.clip) == {"arch": "ViT-L-14", "pretrained": "openai"}
    assert prefix.normalize is True and prefix.prefix_length == 10
    assert prefix.decoding["strategy"] == "greedy" and prefix.decoding["max_new_tokens"] == 67
    hf = prefix.auto_sources[0]
    assert (hf.kind, hf.repo, hf.filename) == ("hf", "Anshler/clip-prefix", "flickr8k_gradient.pt")
    assert prefix.manual_sources[0].url.startswith("https://www.mediafire.com/file/qof8qa7odm4dfck/")

    sbg = entries["sbg-flickr8k"]
    assert set(sbg.files) == {"config.json", "model.safetensors", "generation_config.json"}
    assert sbg.required_files == ("config.json", "model.safetensors")
    assert sbg.decoding["num_candidates"] == 5 and sbg.decoding["top_k"] == 50
    assert {s.repo for s in sbg.auto_sources} == {"Anshler/selective-blind-guessing"}

    vocab = entries["sbg-vocabulary"]
    by_name = {s.filename: s for s in vocab.auto_sources}
    assert (
        by_name["all_labels.pkl"].sha256 == "4463b673465ee4c5a9e185e2cf77482ed1f2bcaba7bc0196e591a0059925c53a"
    )
    assert by_name["all_labels.pkl"].size == 107881
    assert (
        by_name["encyclopedia.pkl"].sha256
        == "921df5859cc65a621197e1d8386f32b8c628891c3356a9653266e8a9151f147a"
    )
    assert by_name["encyclopedia.pkl"].size == 51281
    assert all("dc0668edb47028a12641947d91bbab3f51c0b3c5" in s.url for s in vocab.auto_sources)

    clip = entries["clip-vit-l-14-openai"]
    assert clip.auto_sources[0].repo == "timm/vit_large_patch14_clip_224.openai"
    assert clip.files == ("open_clip_pytorch_model.bin",)

    for model_id in ("clipcap-coco-mlp", "clipcap-conceptual-mlp"):
        entry = entries[model_id]
        assert entry.manual_only and entry.normalize is False
        assert entry.clip["arch"] == "ViT-B-32"
        assert entry.manual_sources[0].url.startswith("https://drive.google.com/file/d/")


def test_every_requirement_exists_and_no_checksum_is_malformed():
    entries = load_registry()
    for entry in entries.values():
        for dep in entry.requires:
            assert dep in entries
        for source in entry.sources:
            assert source.sha256 is None or len(source.sha256) == 64


def test_hf_download_url_and_to_dict_round_trip():
    entries = load_registry()
    source = entries["gpt2-tokenizer"].auto_sources[0]
    assert source.download_url == "https://huggingface.co/gpt2/resolve/main/vocab.json"
    raw = _registry(*(e.to_dict() for e in entries.values()))
    again = parse_registry(json.loads(json.dumps(raw)))
    assert again == entries


def test_entries_are_frozen():
    entry = load_registry()["gpt2-tokenizer"]
    with pytest.raises(AttributeError):
        entry.id = "x"
    with pytest.raises(TypeError):
        entry.decoding["x"] = 1  # read-only mapping


def test_default_decoding_by_kind():
    entries = parse_registry(
        _registry(
            _entry(
                id="p",
                kind="clip-prefix",
                clip={"arch": "ViT-B-32", "pretrained": "openai"},
                prefix_length=10,
                decoding={"max_new_tokens": 20},
            )
        )
    )
    assert dict(entries["p"].decoding) == {"strategy": "greedy", "max_new_tokens": 20, "stop": "."}


def test_get_entry_unknown_lists_known():
    with pytest.raises(ModelNotFound, match="clip-prefix-flickr8k"):
        get_entry("nope")


def test_with_requirements_orders_dependencies_first():
    ordered = [e.id for e in registry.with_requirements(["sbg-flickr8k"])]
    assert ordered[-1] == "sbg-flickr8k"
    assert set(ordered[:-1]) == {"clip-vit-l-14-openai", "gpt2-tokenizer", "sbg-vocabulary"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.update(kind="diffusion"), "unknown kind 'diffusion'"),
        (lambda e: e.pop("display_name"), "missing field"),
        (lambda e: e.update(colour="red"), "unknown field"),
        (lambda e: e["sources"][0].update(sha256="ABC"), "sha256"),
        (lambda e: e["sources"][0].update(sha256="g" * 64), "sha256"),
        (lambda e: e["sources"][0].update(kind="ftp"), "source kind"),
        (lambda e: e["sources"][0].update(url="http://example.invalid/a"), "https://"),
        (lambda e: e["sources"][0].update(size=-1), "size"),
        (lambda e: e["sources"][0].update(size=True), "size"),
        (lambda e: e["sources"][0].update(filename="../a.json"), "relative"),
        (lambda e: e["sources"][0].update(filename="b.json"), "not listed"),
        (lambda e: e.update(files=["a.json", "b.json"]), "has no source"),
        (lambda e: e.update(files=[]), "non-empty"),
        (lambda e: e.update(id="Bad/Id"), "'id'"),
        (lambda e: e.update(id="cache"), "reserved"),
        (
            lambda e: e.update(kind="clip-prefix", clip={"arch": "ViT-B-32", "pretrained": "openai"}),
            "prefix_length",
        ),
        (lambda e: e.update(kind="sbg"), "needs 'clip'"),
        (lambda e: e.update(clip={"arch": "ViT-B-32"}), "'clip'"),
        (lambda e: e.update(requires=["missing-model"]), "unknown model 'missing-model'"),
        (lambda e: e["sources"][0].pop("url"), "https://"),
    ],
)
def test_validation_names_the_entry(mutate, message):
    entry = copy.deepcopy(_entry())
    mutate(entry)
    with pytest.raises(ConfigError) as info:
        parse_registry(_registry(entry))
    text = str(info.value)
    assert message in text
    assert "tiny" in text or "#0" in text or "Bad/Id" in text or "cache" in text


def test_duplicate_ids_rejected():
    with pytest.raises(ConfigError, match="'tiny' appears twice"):
        parse_registry(_registry(_entry(), _entry()))


def test_manual_source_may_cover_files():
    entries = parse_registry(
        _registry(
            _entry(
                files=["w.pt"],
                sources=[{"kind": "manual", "url": "https://example.invalid/page", "filename": "w.pt"}],
            )
        )
    )
    assert entries["tiny"].manual_only


def test_bad_schema_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="schema"):
        parse_registry({"schema": 2, "models": []})
    bad = tmp_path / "registry.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_registry(bad)
    with pytest.raises(ConfigError, match="can't be read"):
        load_registry(tmp_path / "missing.json")


def test_load_registry_from_custom_path(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_registry(_entry())), encoding="utf-8")
    entries = load_registry(path)
    assert list(entries) == ["tiny"]
    source = entries["tiny"].sources[0]
    assert source == ModelSource(kind="url", url="https://example.invalid/a.json", filename="a.json")


def test_converted_entries_install_safetensors_and_json():
    entries = load_registry()
    prefix = entries["clip-prefix-flickr8k"]
    assert prefix.files == ("config.json", "model.safetensors") == prefix.required_files
    assert prefix.convert_from == ("flickr8k_gradient.pt",) == prefix.required_downloads
    assert prefix.converted and prefix.download_files == ("flickr8k_gradient.pt",)
    vocab = entries["sbg-vocabulary"]
    assert vocab.files == ("vocabulary.json",)
    assert set(vocab.convert_from) == {"all_labels.pkl", "encyclopedia.pkl"}
    for manual in ("clipcap-coco-mlp", "clipcap-conceptual-mlp"):
        assert entries[manual].files == ("config.json", "model.safetensors") and entries[manual].converted
    sbg = entries["sbg-flickr8k"]
    assert not sbg.converted and sbg.download_files == sbg.files


def _prefix_entry(**overrides):
    data = _entry(
        kind="clip-prefix",
        clip={"arch": "ViT-B-32", "pretrained": "openai"},
        prefix_length=10,
        files=["config.json", "model.safetensors"],
        convert_from=["w.pt"],
        sources=[{"kind": "url", "url": "https://example.invalid/w.pt", "filename": "w.pt"}],
    )
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "sbg"}, "can't have 'convert_from'"),
        ({"files": ["model.safetensors"]}, "installs ['config.json', 'model.safetensors']"),
        ({"convert_from": ["w.pt", "x.pt"]}, "reads one file"),
        ({"convert_from": []}, "non-empty list"),
        ({"convert_from": ["../w.pt"]}, "relative"),
        (
            {"sources": [{"kind": "url", "url": "https://example.invalid/a", "filename": "config.json"}]},
            "not listed in 'convert_from'",
        ),
        (
            {
                "sources": [
                    {
                        "kind": "url",
                        "url": "https://example.invalid/w.pt",
                        "filename": "w.pt",
                        "optional": True,
                    }
                ]
            },
            "can't be 'optional'",
        ),
    ],
)
def test_convert_from_validation(overrides, message):
    with pytest.raises(ConfigError) as info:
        parse_registry(_registry(_prefix_entry(**overrides)))
    assert message in str(info.value) and "'tiny'" in str(info.value)


def test_vocabulary_conversion_needs_the_published_names():
    entry = _entry(
        kind="sbg-vocabulary",
        files=["vocabulary.json"],
        convert_from=["labels.pkl", "encyclopedia.pkl"],
        sources=[
            {"kind": "url", "url": "https://example.invalid/a", "filename": "labels.pkl"},
            {"kind": "url", "url": "https://example.invalid/b", "filename": "encyclopedia.pkl"},
        ],
    )
    with pytest.raises(ConfigError, match="reads \\['all_labels.pkl', 'encyclopedia.pkl'\\]"):
        parse_registry(_registry(entry))
    ok = parse_registry(_registry(_prefix_entry()))["tiny"]
    assert ok.required_files == ("config.json", "model.safetensors") and ok.required_downloads == ("w.pt",)
    assert parse_registry(_registry(ok.to_dict()))["tiny"] == ok


def test_errors_are_one_line_naming_the_file_the_entry_and_the_field(tmp_path):
    bad_size = _entry()
    bad_size["sources"][0]["size"] = "big"
    for entry, field in ((bad_size, "'size'"), (_entry(display_name=None), "'display_name'")):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(_registry(entry)), encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_registry(path)
        text = str(info.value)
        assert str(path) in text and "entry 'tiny'" in text and field in text and "\n" not in text


def test_null_means_the_default_for_optional_fields():
    entry = parse_registry(_registry(_entry(requires=None, decoding=None, clip=None)))["tiny"]
    assert entry.requires == () and dict(entry.decoding) == {} and entry.clip is None
