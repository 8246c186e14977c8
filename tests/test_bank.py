"""The SBG label bank: prompt sets, one batched encode, the safetensors cache, bare-word features.

``HashEncoder`` (a deterministic fake CLIP text tower) is shared with the keyword tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from icg.sbg.bank import LabelBank, build_prompt_sets, cache_paths
from icg.sbg.vocab import Vocabulary
from tests.test_vocab import small_vocab_dict


class HashEncoder:
    """Maps each text to a fixed random unit vector (seeded by its sha256). ``overrides`` give a text
    the vector of another text, ``vectors`` give texts explicit vectors (normalised). Counts calls."""

    def __init__(
        self,
        dim: int = 32,
        overrides: dict[str, str] | None = None,
        vectors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.dim = dim
        self.overrides = dict(overrides or {})
        self.vectors = {t: v / v.norm() for t, v in (vectors or {}).items()}
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> torch.Tensor:
        text = self.overrides.get(text, text)
        if text not in self.vectors:
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            v = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
            self.vectors[text] = v / v.norm()
        return self.vectors[text]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts])


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_dict(small_vocab_dict())


# -------------------------------------------------------------------------------------- prompt sets


def test_subject_prompts(vocab):
    subjects = build_prompt_sets(vocab)["subjects"]
    assert len(subjects) == 25
    assert subjects.prompts[:6] == (
        "picture of landscape.",
        "picture of people.",
        "picture of animal.",
        "picture of plant.",
        "picture of some object.",
        "picture of landscape and people.",
    )
    assert subjects.labels[5] == ("landscape", "people")
    assert subjects.prompts[15] == "picture of landscape and people and animal."
    assert subjects.labels[-1] == ("animal", "plant", "some object")
    assert subjects.prompts[-1] == "picture of animal and plant and some object."


def test_human_and_clothing_prompts(vocab):
    sets = build_prompt_sets(vocab)
    human = sets["human"]
    assert len(human) == 6 + 18 + 3 + 1
    assert human.labels[:7] == (
        "a man",
        "a woman",
        "a boy",
        "a girl",
        "an old man",
        "an old woman",
        "two men",
    )
    assert human.labels[11] == "two old women" and human.labels[12] == "three men"  # outer loop: count
    assert human.labels[24:] == ("two people", "three people", "four people", "a crowd of people")
    assert human.prompts[7] == "picture of two women."
    assert human.prompts[-1] == "picture of a crowd of people."
    clothing = sets["clothing"]
    assert len(clothing) == 40
    assert clothing.labels[:2] == ("red shirt", "orange shirt")
    assert clothing.labels[9:11] == ("black shirt", "red suit")  # outer loop: garment
    assert clothing.prompts[10] == "wearing red suit."
    assert clothing.prompts[-1] == "wearing black jacket."
    occupation = sets["occupation"]
    assert occupation.labels == vocab.word_list("human")
    assert occupation.prompts[3] == "picture of chef."


def test_category_and_tertiary_prompts(vocab):
    sets = build_prompt_sets(vocab)
    assert sets["flat"].labels == sets["flat"].prompts == vocab.flat_labels()
    assert sets["scenery"].labels == vocab.subcategories("scenery")
    assert sets["scenery"].prompts[1] == "picture of beach."
    assert "clothing and fashion" not in sets["object"].labels
    assert sets["object"].labels == ("tool", "food", "vehicle")
    assert "object/clothing and fashion" not in sets
    assert sets["time"].prompts == ("picture during morning.", "picture during night.")
    assert sets["weather"].labels == ("rainy", "sunny", "snowy")
    assert sets["activity"].prompts[0] == "activity is eating."
    beach = sets["scenery/beach"]
    assert len(beach) == 100  # first 100 of 120
    assert beach.labels[:2] == ("sand", "beach") and beach.prompts[0] == "picture of sand."
    assert len(sets["animal/mammal"]) == 100 and len(sets["activity/moving"]) == 100
    assert sets["activity/moving"].prompts[0] == "activity is run 0."
    assert sets["object/vehicle"].labels == ("car 0",)
    # empty keyword lists have no tertiary set
    assert "scenery/grassland" not in sets and "activity/sleeping" not in sets
    # time and weather keywords are never scored
    assert not any(name.startswith(("time/", "weather/")) for name in sets)
    assert len(build_prompt_sets(vocab, tertiary_limit=10)["scenery/beach"]) == 10


# ------------------------------------------------------------------------------------------ building


def test_build_encodes_each_distinct_prompt_once(vocab):
    encoder = HashEncoder()
    bank = LabelBank.build(vocab, encoder, "fake-clip")
    assert len(encoder.calls) == 1
    encoded = encoder.calls[0]
    assert len(encoded) == len(set(encoded)) == len(bank.prompts)
    every = {p for name in bank.names() for p in bank.prompt_set(name).prompts}
    assert set(encoded) == every
    for name in ("flat", "subjects", "human", "scenery/beach", "activity/moving"):
        prompts = bank.prompt_set(name).prompts
        assert torch.equal(bank.features(name), torch.stack([encoder.vector(p) for p in prompts]))
    assert bank.dim == 32 and bank.device == torch.device("cpu")
    assert bank.tertiary("scenery", "beach") is bank.prompt_set("scenery/beach")
    assert bank.tertiary("scenery", "grassland") is None
    assert bank.tertiary("object", "clothing and fashion") is None


def test_build_without_cache_dir_touches_no_disk(vocab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    LabelBank.build(vocab, HashEncoder(), "fake-clip", cache_dir=None)
    assert list(tmp_path.iterdir()) == []


def test_bad_encoder_output_is_reported(vocab):
    class Short(HashEncoder):
        def encode_texts(self, texts):
            return super().encode_texts(texts)[:-1]

    with pytest.raises(ValueError, match="encode_texts returned"):
        LabelBank.build(vocab, Short(), "fake-clip")


# --------------------------------------------------------------------------------------------- cache


def test_cache_hit(vocab, tmp_path):
    first = HashEncoder()
    built = LabelBank.build(vocab, first, "fake-clip", cache_dir=tmp_path)
    path, sidecar = cache_paths(tmp_path, "fake-clip")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.rsplit("/", 1)[1], sidecar.rsplit("/", 1)[1]]
    )
    info = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    assert info["key"] == built.key and info["prompts"] == len(built.prompts) and info["dim"] == 32
    with safe_open(path, framework="pt") as handle:
        assert list(handle.keys()) == ["features"]
        assert json.loads(handle.metadata()["prompts"]) == list(built.prompts)

    second = HashEncoder()
    loaded = LabelBank.build(vocab, second, "fake-clip", cache_dir=tmp_path)
    assert second.calls == []
    assert loaded.key == built.key
    for name in built.names():
        assert torch.equal(loaded.features(name), built.features(name))


def test_cache_miss_for_another_clip_model(vocab, tmp_path):
    LabelBank.build(vocab, HashEncoder(), "clip-a", cache_dir=tmp_path)
    other = HashEncoder()
    bank = LabelBank.build(vocab, other, "clip-b", cache_dir=tmp_path)
    assert len(other.calls) == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # one bank per CLIP model
    again = HashEncoder()
    assert LabelBank.build(vocab, again, "clip-b", cache_dir=tmp_path).key == bank.key
    assert again.calls == []


def test_cache_invalidated_when_a_prompt_changes(tmp_path, caplog):
    data = small_vocab_dict()
    LabelBank.build(Vocabulary.from_dict(data), HashEncoder(), "fake-clip", cache_dir=tmp_path)
    data["encyclopedia"]["scenery"]["sky"].append("rainbow")
    changed = Vocabulary.from_dict(data)
    encoder = HashEncoder()
    with caplog.at_level(logging.INFO, logger="icg.sbg.bank"):
        bank = LabelBank.build(changed, encoder, "fake-clip", cache_dir=tmp_path)
    assert len(encoder.calls) == 1 and "picture of rainbow." in encoder.calls[0]
    assert "stale" in caplog.text
    assert "scenery/sky" in bank.names() and "rainbow" in bank.prompt_set("scenery/sky").labels
    # the rebuilt cache replaced the old one and now hits
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    hit = HashEncoder()
    LabelBank.build(changed, hit, "fake-clip", cache_dir=tmp_path)
    assert hit.calls == []


def test_cache_key_depends_on_prompt_text_not_only_labels(vocab, tmp_path):
    a = LabelBank.build(vocab, HashEncoder(), "fake-clip", cache_dir=tmp_path)
    b = LabelBank.build(vocab, HashEncoder(), "fake-clip", cache_dir=tmp_path, tertiary_limit=50)
    assert a.key != b.key


@pytest.mark.parametrize("damage", ["garbage", "truncate", "sidecar", "metadata", "nan"])
def test_corrupt_cache_is_rebuilt(vocab, tmp_path, caplog, damage):
    built = LabelBank.build(vocab, HashEncoder(), "fake-clip", cache_dir=tmp_path)
    path, sidecar = cache_paths(tmp_path, "fake-clip")
    if damage == "garbage":
        Path(path).write_bytes(b"\x00" * 100)
    elif damage == "truncate":
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    elif damage == "sidecar":
        Path(sidecar).write_text("{not json")
    elif damage == "metadata":
        from safetensors.torch import save_file

        save_file(
            {"features": built.features("flat")}, path, {"format": "icg-sbg-label-bank", "key": built.key}
        )
    elif damage == "nan":
        from safetensors.torch import save_file

        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata()
        bad = torch.full((len(built.prompts), 32), float("nan"))
        save_file({"features": bad}, path, meta)
    encoder = HashEncoder()
    with caplog.at_level(logging.WARNING, logger="icg.sbg.bank"):
        rebuilt = LabelBank.build(vocab, encoder, "fake-clip", cache_dir=tmp_path)
    assert len(encoder.calls) == 1
    assert "unreadable" in caplog.text
    assert torch.equal(rebuilt.features("flat"), built.features("flat"))
    hit = HashEncoder()
    LabelBank.build(vocab, hit, "fake-clip", cache_dir=tmp_path)
    assert hit.calls == []


def test_unwritable_cache_dir_is_not_fatal(vocab, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="icg.sbg.bank"):
        bank = LabelBank.build(vocab, HashEncoder(), "fake-clip", cache_dir=blocker / "cache")
    assert "could not write" in caplog.text
    assert len(bank.prompts) > 0


def test_cache_file_name_is_safe(tmp_path):
    path, sidecar = cache_paths(tmp_path, "hf-hub:laion/CLIP ViT-L-14/../x")
    name = path.rsplit("/", 1)[1]
    assert name.startswith("sbg-bank-hf-hub-laion-CLIP-ViT-L-14-..-x-") and name.endswith(".safetensors")
    assert sidecar == path[: -len(".safetensors")] + ".json"
    assert cache_paths(tmp_path, "a/b")[0] != cache_paths(tmp_path, "a-b")[0]


# ------------------------------------------------------------------------------------- word features


def test_word_features_from_the_bank_and_encoded_once(vocab):
    encoder = HashEncoder()
    bank = LabelBank.build(vocab, encoder, "fake-clip")
    encoder.calls.clear()
    features = bank.word_features(["dog", "beach", "dog"])  # flat labels: no encoding
    assert encoder.calls == []
    assert torch.equal(features, torch.stack([encoder.vector(w) for w in ("dog", "beach", "dog")]))

    features = bank.word_features(["sand", "dog", "two women", "sand"])
    assert encoder.calls == [["sand", "two women"]]  # one call, distinct missing words only
    assert torch.equal(features[3], encoder.vector("sand"))
    bank.word_features(["two women", "sand"])
    assert len(encoder.calls) == 1  # cached
    assert bank.word_features([]).shape == (0, 32)


def test_word_cache_is_bounded_lru(vocab):
    encoder = HashEncoder()
    bank = LabelBank.build(vocab, encoder, "fake-clip", word_cache_size=2)
    encoder.calls.clear()
    bank.word_features(["x1", "x2"])
    bank.word_features(["x1"])  # x1 is now most recent
    bank.word_features(["x3"])  # evicts x2
    bank.word_features(["x1"])
    assert encoder.calls == [["x1", "x2"], ["x3"]]
    bank.word_features(["x2"])
    assert encoder.calls[-1] == ["x2"]


def test_to_device_keeps_everything_consistent(vocab):
    bank = LabelBank.build(vocab, HashEncoder(), "fake-clip")
    bank.word_features(["sand"])
    assert bank.to("cpu") is bank
    assert bank.word_features(["sand", "dog"]).device == torch.device("cpu")
