"""The SBG captioner end to end on the fixture models: keywords -> one batched, seeded generate ->
CLIP re-ranking; keywords typed by a person; force/ban; the published and clean styles; the loader.

``sbg_models`` (shared with the CLI tests) writes the fixtures in their real formats and converts the
fixture vocabulary pickles into a models folder, as ``icg download sbg-vocabulary`` would leave it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from icg.captioners.result import CaptionResult
from icg.config import DecodingConfig
from icg.errors import CheckpointError, ConfigError, ModelNotFound
from icg.models import loading
from icg.models.manager import Factories, ModelManager, RuntimeConfig
from icg.options import CaptionOptions
from icg.pipeline import caption_images
from icg.sbg import captioner as sbg
from icg.sbg.captioner import SBG_DECODING, SbgCaptioner, parse_keywords, sbg_settings
from icg.sbg.vocab import convert_pickles
from icg.text import finish_caption
from tests import fixtures

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def write_sbg_models(root: Path) -> dict[str, Path]:
    """Fixture files plus a models folder holding ``sbg-vocabulary/vocabulary.json``."""
    manifest = {k: Path(v) for k, v in fixtures.write_all(root / "fixtures").items()}
    models = root / "models"
    vocab_json = models / "sbg-vocabulary" / "vocabulary.json"
    convert_pickles(manifest["all_labels_pkl"], manifest["encyclopedia_pkl"], vocab_json)
    images = []
    for i, colour in enumerate([(200, 30, 30), (20, 160, 40), (30, 40, 220)]):
        path = root / f"image{i}.png"
        Image.new("RGB", (48, 40), colour).save(path)
        images.append(path)
    return {**manifest, "models": models, "vocabulary_json": vocab_json, "images": images}


def make_manager(files, models_dir=None, **factories) -> ModelManager:
    runtime = RuntimeConfig(
        device="cpu",
        models_dir=str(models_dir or files["models"]),
        clip=str(files["clip_dir"]),
        tokenizer=str(files["tokenizer_dir"]),
    )
    return ModelManager(runtime, Factories(**factories))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_sbg_models(tmp_path_factory.mktemp("sbg"))


@pytest.fixture(scope="module")
def manager(files):
    return make_manager(files)


@pytest.fixture(scope="module")
def captioner(files, manager) -> SbgCaptioner:
    return manager.captioner(str(files["sbg_generator_dir"]))


@pytest.fixture(scope="module")
def features(files, manager, captioner):
    clip = manager.clip(captioner.clip_spec)
    return clip.encode_images([Image.open(p) for p in files["images"]])


def _texts(result: CaptionResult) -> list[str]:
    return [c.text for c in result.candidates]


# ------------------------------------------------------------------------------------------ loading


def test_loader_builds_an_sbg_captioner(captioner, manager, files):
    assert isinstance(captioner, SbgCaptioner)
    assert captioner.kind == "sbg" and captioner.normalize is True
    assert captioner.decoding == SBG_DECODING
    assert (captioner.decoding.strategy, captioner.decoding.num_samples) == ("sample", 5)
    assert (captioner.decoding.top_k, captioner.decoding.temperature, captioner.decoding.stop) == (
        50,
        1.0,
        ".",
    )
    assert captioner.style == "clean"
    assert captioner.clip_spec.weights_path.startswith(str(files["clip_dir"]))
    assert captioner.vocabulary.source == str(files["vocabulary_json"])
    assert captioner._clip() is manager.clip(captioner.clip_spec)  # the manager's shared encoder
    assert captioner.lm.dtype == manager.dtype and captioner.device.type == "cpu"


def test_one_clip_is_shared_by_the_prefix_and_sbg_captioners(files, tmp_path):
    made = []

    def clip_factory(spec, manager):
        made.append(spec.id)
        return loading.load_clip(spec, manager)

    shutil.copytree(files["models"], tmp_path / "models")
    manager = make_manager(files, models_dir=tmp_path / "models", clip=clip_factory)
    prefix = caption_images(manager, str(files["clip_prefix_pt"]), files["images"][:1])
    sbg_results = caption_images(manager, str(files["sbg_generator_dir"]), files["images"][:1])
    assert prefix[0].model != sbg_results[0].model and sbg_results[0].keywords
    assert len(made) == 1  # the CLIP was loaded once, for both captioners and for the SBG label bank
    assert manager.captioner(str(files["sbg_generator_dir"]))._clip() is manager.clip(
        manager.captioner(str(files["clip_prefix_pt"])).clip_spec
    )
    # the bank was cached under <models_dir>/cache/
    assert list((tmp_path / "models" / "cache").glob("sbg-bank-*.safetensors"))


def test_the_label_bank_is_built_lazily_and_read_back_from_the_disk_cache(files, tmp_path):
    shutil.copytree(files["models"], tmp_path / "models")
    first = make_manager(files, models_dir=tmp_path / "models")
    sbg_model = first.captioner(str(files["sbg_generator_dir"]))
    assert not sbg_model.bank_ready and first.loaded()["clip"] is None  # loading encodes nothing
    bank = sbg_model.bank
    (cached,) = (tmp_path / "models" / "cache").glob("sbg-bank-*.safetensors")
    stamp = cached.stat().st_mtime_ns

    second = make_manager(files, models_dir=tmp_path / "models")
    again = second.captioner(str(files["sbg_generator_dir"])).bank
    assert cached.stat().st_mtime_ns == stamp  # read, not rewritten
    assert again.key == bank.key
    assert torch.equal(again.features("flat"), bank.features("flat"))


def test_sbg_settings_map_the_registry_defaults():
    cfg, style = sbg_settings({"num_candidates": 3, "top_k": 10, "style": "published"}, where="test")
    assert (cfg.strategy, cfg.num_samples, cfg.top_k, cfg.stop) == ("sample", 3, 10, ".")
    assert style == "published"
    assert sbg_settings(None, where="test") == (SBG_DECODING, "clean")
    with pytest.raises(ConfigError, match="num_beems"):
        sbg_settings({"num_beems": 2}, where="test")
    with pytest.raises(ConfigError, match="caption style"):
        sbg_settings({"style": "fancy"}, where="test")


def test_icg_json_in_the_model_folder_names_vocabulary_and_defaults(files, tmp_path):
    folder = tmp_path / "my-sbg"
    shutil.copytree(files["sbg_generator_dir"], folder)
    shutil.copy(files["vocabulary_json"], tmp_path / "words.json")
    settings = {
        "format": "icg-sbg",
        "version": 1,
        "vocabulary": str(tmp_path / "words.json"),
        "decoding": {"num_candidates": 2, "style": "published"},
    }
    (folder / "icg.json").write_text(json.dumps(settings), encoding="utf-8")
    manager = make_manager(files, models_dir=tmp_path / "empty-models")
    model = manager.captioner(str(folder))
    assert model.vocabulary.source == str(tmp_path / "words.json")
    assert model.decoding.num_samples == 2 and model.style == "published"
    result = model.caption_keywords("dog, grass", model.decoding.replace(seed=1))
    assert len(result.candidates) == 2 and all(c.text.endswith(" .") for c in result.candidates)


def test_a_vocabulary_override_wins(files, tmp_path):
    shutil.copy(files["vocabulary_json"], tmp_path / "words.json")
    resolved = loading.resolve_model(str(files["sbg_generator_dir"]), make_manager(files))
    manager = make_manager(files, models_dir=tmp_path / "empty-models")
    model = sbg.load_sbg_captioner("x", resolved, manager, vocabulary=str(tmp_path / "words.json"))
    assert model.vocabulary.source == str(tmp_path / "words.json") and model.model_id == "x"


def test_a_missing_vocabulary_names_the_fix(files, tmp_path):
    with pytest.raises(ModelNotFound, match="icg download sbg-vocabulary"):
        make_manager(files, models_dir=tmp_path / "empty").captioner(str(files["sbg_generator_dir"]))


def test_published_pickles_in_the_models_folder_are_converted_once(files, tmp_path):
    folder = tmp_path / "models" / "sbg-vocabulary"
    folder.mkdir(parents=True)
    shutil.copy(files["all_labels_pkl"], folder / "all_labels.pkl")
    shutil.copy(files["encyclopedia_pkl"], folder / "encyclopedia.pkl")
    model = make_manager(files, models_dir=tmp_path / "models").captioner(str(files["sbg_generator_dir"]))
    assert (folder / "vocabulary.json").is_file()
    assert model.vocabulary.to_dict() == json.loads(files["vocabulary_json"].read_text(encoding="utf-8"))


def test_a_folder_without_safetensors_weights_is_refused(files, tmp_path):
    folder = tmp_path / "bin-only"
    shutil.copytree(files["sbg_generator_dir"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        make_manager(files).captioner(str(folder))


def test_the_language_model_runs_in_the_managers_dtype(files):
    manager = ModelManager(
        RuntimeConfig(
            device="cpu",
            dtype="bf16",
            models_dir=str(files["models"]),
            clip=str(files["clip_dir"]),
            tokenizer=str(files["tokenizer_dir"]),
        )
    )
    model = manager.captioner(str(files["sbg_generator_dir"]))
    assert model.lm.dtype == torch.bfloat16
    assert model.caption_keywords("dog", SBG_DECODING.replace(seed=0, max_new_tokens=4)).candidates


# ------------------------------------------------------------------------------------------ captioning


def test_end_to_end_through_the_pipeline(files, manager, captioner):
    results = caption_images(
        manager, str(files["sbg_generator_dir"]), files["images"], decoding=SBG_DECODING.replace(seed=7)
    )
    assert len(results) == 3
    clip = manager.clip(captioner.clip_spec)
    for path, result in zip(files["images"], results):
        assert result.source == str(path) and result.model == str(files["sbg_generator_dir"])
        assert result.score_kind == "clip" and result.seed == 7 and result.decoding["seed"] == 7
        assert result.keywords and all(k.step for k in result.keywords)
        assert [k.score for k in result.keywords] == sorted((k.score for k in result.keywords), reverse=True)
        assert result.candidates and result.caption == result.candidates[0].text
        scores = [c.score for c in result.candidates]
        assert scores == sorted(scores, reverse=True)
        # the scores are the CLIP cosine similarities of the candidates (as shown) with the image
        image = clip.encode_images([Image.open(path)])[0]
        expected = clip.encode_texts(_texts(result)) @ image
        assert torch.allclose(torch.tensor(scores), expected, atol=1e-5)
        assert {"load", "encode", "keywords", "generate", "rerank"} <= set(result.timings)


def test_keywords_are_the_selectors_and_the_prompt_is_published_format(captioner, features, monkeypatch):
    calls = []
    real = sbg.generate

    def spy(lm, **kwargs):
        calls.append(kwargs)
        return real(lm, **kwargs)

    monkeypatch.setattr(sbg, "generate", spy)
    results = captioner.caption_features(features, SBG_DECODING.replace(seed=0))
    expected = captioner.selector.select(features)
    assert [[k.text for k in r.keywords] for r in results] == [s.texts for s in expected]
    assert [[k.step for k in r.keywords] for r in results] == [[k.step for k in s.keywords] for s in expected]

    assert len(calls) == 1  # every image and every candidate in ONE generate call
    (call,) = calls
    assert call["cfg"].num_samples == 5 and call["input_ids"].shape[0] == len(features)
    ids, mask = call["input_ids"], call["attention_mask"]
    tok = captioner.tokenizer
    for row, selection in enumerate(expected):
        prompt = ", ".join(selection.texts) + " ###"
        assert selection.prompt == prompt
        real_ids = ids[row] if mask is None else ids[row][mask[row].bool()]
        assert tok.decode(real_ids) == prompt
        if mask is not None:  # left padding: the real tokens are the row's last ones
            n = int(mask[row].sum())
            assert mask[row, -n:].all() and not mask[row, :-n].any()
    assert mask is not None  # the fixture images' prompts differ in length


def test_same_seed_same_candidates_different_seed_different(captioner, features):
    first = captioner.caption_features(features, SBG_DECODING.replace(seed=11))
    again = captioner.caption_features(features, SBG_DECODING.replace(seed=11))
    other = captioner.caption_features(features, SBG_DECODING.replace(seed=12))
    assert [r.to_dict()["candidates"] for r in first] == [r.to_dict()["candidates"] for r in again]
    assert [_texts(r) for r in first] != [_texts(r) for r in other]


def test_a_seed_reproduces_an_images_candidates_alone_or_in_a_batch(captioner, features):
    cfg = SBG_DECODING.replace(seed=21)
    together = captioner.caption_features(features, cfg)
    for row in range(len(features)):
        alone = captioner.caption_features(features[row : row + 1], cfg)
        assert _texts(alone[0]) == _texts(together[row])


def test_an_unseeded_call_records_a_seed_that_reproduces_it(captioner, features):
    first = captioner.caption_features(features[:1])
    assert isinstance(first[0].seed, int) and first[0].decoding["seed"] == first[0].seed
    replay = captioner.caption_features(features[:1], DecodingConfig(**first[0].decoding))
    assert _texts(replay[0]) == _texts(first[0])


def test_candidates_end_at_the_first_stop_exactly_as_cutting_a_longer_sample(captioner, features):
    """Decoding stops at the first token containing "."; sampling on without a stop and cutting the text
    the predecessor's way (``split('.')[0].strip() + ' .'``) gives the same candidates."""
    cfg = SBG_DECODING.replace(seed=3, max_new_tokens=30)
    stopped = captioner.caption_features(features, cfg, CaptionOptions(style="published"))
    longer = captioner.caption_features(features, cfg.replace(stop=None), CaptionOptions(style="published"))
    for a, b in zip(stopped, longer):
        cut = [c.text[: -len(" .")].split(".")[0].strip() + " ." for c in b.candidates]
        assert sorted(_texts(a)) == sorted(cut)
    assert any("." in c.text[:-2] for r in longer for c in r.candidates)  # the stop mattered
    stop_ids = set(captioner.stop_ids(cfg))
    tok = captioner.tokenizer
    assert stop_ids == {i for i in range(len(tok)) if "." in tok.decode([i])} | {tok.eos_token_id}


def test_force_and_ban_steer_the_selection(captioner, features):
    plain = captioner.caption_features(features[:1], SBG_DECODING.replace(seed=0))[0]
    banned = plain.keywords[0].text
    steered = captioner.caption_features(
        features[:1], SBG_DECODING.replace(seed=0), CaptionOptions(force=["zebra"], ban=[banned.upper()])
    )[0]
    texts = [k.text for k in steered.keywords]
    assert "zebra" in texts and banned not in texts
    assert next(k for k in steered.keywords if k.text == "zebra").step == "forced"


def test_caption_options_reach_captioners_called_through_the_pipeline(files, manager):
    model = str(files["sbg_generator_dir"])
    cfg = SBG_DECODING.replace(seed=0)
    options = CaptionOptions(force=["zebra"], style="published")
    inside = caption_images(manager, model, files["images"][:1], decoding=cfg, options=options)
    outside = caption_images(manager, model, files["images"][:1], decoding=cfg)
    assert "zebra" in [k.text for k in inside[0].keywords]
    assert "zebra" not in [k.text for k in outside[0].keywords]
    assert all(c.text.endswith(" .") for c in inside[0].candidates)


def test_published_and_clean_styles(captioner, features):
    cfg = SBG_DECODING.replace(seed=5)
    published = captioner.caption_features(features, cfg, CaptionOptions(style="published"))
    clean = captioner.caption_features(features, cfg, CaptionOptions(style="clean"))
    for pub, cln in zip(published, clean):
        assert len(pub.candidates) == cfg.num_samples  # published keeps every sample
        raws = [c.text[: -len(" .")] for c in pub.candidates]
        assert all(c.text == r.strip() + " ." for c, r in zip(pub.candidates, raws))
        # clean: the same samples as tidy sentences, without empty or repeated ones
        tidy = {finish_caption(r, "clean") for r in raws} - {""}
        assert set(_texts(cln)) == tidy and len(_texts(cln)) == len(tidy)
        assert all(t[0] == t[0].upper() and t.endswith(".") and not t.endswith(" .") for t in _texts(cln))
        assert [k.text for k in pub.keywords] == [k.text for k in cln.keywords]


def test_published_keywords_never_repeat(captioner, features):
    """The predecessor ranks its final keywords through a dict: its prompts hold each keyword once."""
    published = CaptionOptions(style="published")
    for result in captioner.caption_features(features, SBG_DECODING.replace(seed=0), published):
        texts = [k.text for k in result.keywords]
        assert len(texts) == len(set(texts))


# ------------------------------------------------------------------------------------------ keywords in


def test_keywords_in_caption_out_without_an_image(files):
    manager = make_manager(files)
    model = manager.captioner(str(files["sbg_generator_dir"]))
    result = model.caption_keywords("dog,  grass , ", SBG_DECODING.replace(seed=2))
    assert [(k.text, k.step) for k in result.keywords] == [("dog", "user"), ("grass", "user")]
    assert result.score_kind == "logprob" and result.seed == 2 and result.candidates
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert result.caption == result.candidates[0].text
    assert manager.loaded()["clip"] is None  # no image: CLIP is never loaded
    again = model.caption_keywords(["dog", "grass"], SBG_DECODING.replace(seed=2))
    assert _texts(again) == _texts(result)


def test_typed_keywords_are_deduplicated_in_the_clean_style_only(captioner):
    cfg = SBG_DECODING.replace(seed=0, max_new_tokens=3)
    clean = captioner.caption_keywords("dog, Dog, grass", cfg)
    published = captioner.caption_keywords("dog, Dog, grass", cfg, options=CaptionOptions(style="published"))
    assert [k.text for k in clean.keywords] == ["dog", "grass"]
    assert [k.text for k in published.keywords] == ["dog", "Dog", "grass"]
    edited = captioner.caption_keywords(
        "dog, man, grass", cfg, options=CaptionOptions(force=["beach"], ban=["MAN"])
    )
    assert [k.text for k in edited.keywords] == ["dog", "grass", "beach"]


def test_typed_keywords_with_an_image_are_reranked_by_clip(captioner, features):
    result = captioner.caption_keywords(["grass", "dog"], SBG_DECODING.replace(seed=4), features[0])
    assert result.score_kind == "clip"
    assert [(k.text, k.step) for k in result.keywords] == [("grass", "user"), ("dog", "user")]
    assert sum(k.score for k in result.keywords) == pytest.approx(1.0)  # scored against the image
    per_image = captioner.caption_features(
        features[:2], SBG_DECODING.replace(seed=4), CaptionOptions(keywords=["grass", "dog"])
    )
    assert all([k.text for k in r.keywords] == ["grass", "dog"] for r in per_image)
    with pytest.raises(ValueError, match="2 images"):
        captioner.caption_features(features[:2], per_image_keywords=[["dog"], ["cat"], ["cow"]])


def test_parse_keywords():
    assert parse_keywords(" dog , two  old men,, ") == ["dog", "two old men"]
    assert parse_keywords(["a ", "", " b"]) == ["a", "b"]
    with pytest.raises(ConfigError):
        parse_keywords([3])


def test_other_strategies_work_too(captioner, features):
    greedy = captioner.caption_features(features[:1], SBG_DECODING.replace(strategy="greedy"))[0]
    assert greedy.seed is None and len(greedy.candidates) <= 1
    beams = captioner.caption_features(features[:1], SBG_DECODING.replace(strategy="beam", num_beams=3))[0]
    assert 1 <= len(beams.candidates) <= 3


def test_a_prompt_too_long_for_the_model_drops_its_last_keywords(captioner, caplog):
    words = [f"word{i}" for i in range(80)]  # the fixture GPT-2 reads 128 positions
    cfg = SBG_DECODING.replace(seed=0, max_new_tokens=40)
    with caplog.at_level("WARNING", logger="icg.sbg.captioner"):
        result = captioner.caption_keywords(words, cfg)
    kept = [k.text for k in result.keywords]
    assert 0 < len(kept) < len(words) and kept == words[: len(kept)]
    assert len(captioner.tokenizer(captioner.prompt(kept))["input_ids"]) + 40 <= 128
    assert "prompt too long" in caplog.text
    with pytest.raises(ConfigError, match="leaves no room"):
        captioner.caption_keywords("dog", cfg.replace(max_new_tokens=128))


def test_no_features_no_results(captioner, features):
    assert captioner.caption_features(features[:0]) == []
