"""The SBG vocabulary: JSON format, validation, conversion from the published pickle layout.

``small_vocab_dict`` builds a small vocabulary with the published structure (all 11 categories, empty
keyword lists, lists longer than 100); the bank and keyword tests use it too.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys

import pytest

from icg.errors import UnsafePickleError, VocabularyError
from icg.sbg.vocab import (
    CATEGORIES,
    FORMAT,
    HIERARCHY_CATEGORIES,
    VERSION,
    Label,
    Vocabulary,
    convert_pickles,
)

_POS_CYCLE = ("NOUN", "NOUN", "ADJ", "VERB", "ADV", "NUM", "NOUN")
# Real words first, so that flat labels overlap sub-category names and keywords as in the published data.
_HEAD = ["man", "dog", "beach", "tree", "red", "indoor", "woman", "rainy", "chef", "zebra-like"]


def small_vocab_dict() -> dict:
    """A vocabulary in the JSON format with the published structure, small but with every feature."""
    words = _HEAD + [f"word{i}" for i in range(1490)]
    labels = [[w, "NOUN" if i < len(_HEAD) else _POS_CYCLE[i % 7], 100_000 - i] for i, w in enumerate(words)]

    def kws(prefix: str, n: int) -> list[str]:
        return [f"{prefix} {i}" for i in range(n)]

    encyclopedia = {
        "scenery": {
            "sky": kws("cloud", 5),
            "beach": ["sand", "beach"] + kws("shell", 118),  # 120 > 100; contains its own name
            "indoor": kws("room", 4),
            "grassland": [],
            "city landscape": kws("street", 2),
        },
        "human": ["man", "woman", "child", "chef", "doctor", "nurse"],
        "animal": {"mammal": ["dog"] + kws("mammal", 129), "bird": kws("bird", 3), "fish": ["trout"]},
        "plant": {"tree": kws("tree", 5), "flower": kws("flower", 2)},
        "object": {
            "tool": kws("tool", 104),
            "clothing and fashion": kws("hat", 5),
            "food": kws("food", 3),
            "vehicle": kws("car", 1),
        },
        "activity": {"eating": kws("eat", 3), "moving": kws("run", 150), "sleeping": []},
        "weather": {"rainy": kws("rain", 3), "sunny": [], "snowy": kws("snow", 2)},
        "time": {"morning": kws("dawn", 2), "night": ["moon"]},
        "number": ["two", "three"],
        "adverb": ["in", "on"],
        "adjective": ["red", "big"],
    }
    return {"format": FORMAT, "version": VERSION, "labels": labels, "encyclopedia": encyclopedia}


def _write(tmp_path, data, name="vocabulary.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _error(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(VocabularyError) as info:
        Vocabulary.from_json(path)
    message = str(info.value)
    assert message.startswith(path + ": "), message
    return message


# ------------------------------------------------------------------------------------------ loading


def test_round_trip_dict_and_json(tmp_path):
    data = small_vocab_dict()
    vocab = Vocabulary.from_dict(data)
    assert vocab.to_dict() == data
    path = tmp_path / "out" / "vocabulary.json"
    vocab.save_json(path)
    again = Vocabulary.from_json(path)
    assert again.to_dict() == data
    assert again.source == str(path)
    assert again.labels == vocab.labels
    assert [p.name for p in path.parent.iterdir()] == ["vocabulary.json"]  # no temporary file left


def test_accessors():
    vocab = Vocabulary.from_dict(small_vocab_dict())
    assert vocab.labels[0] == Label("man", "NOUN", 100_000)
    assert vocab.subcategories("scenery") == ("sky", "beach", "indoor", "grassland", "city landscape")
    assert vocab.keywords("scenery", "grassland") == ()
    assert vocab.keywords("time", "night") == ("moon",)
    assert len(vocab.keywords("scenery", "beach")) == 120  # the vocabulary keeps everything; the bank caps
    assert vocab.word_list("human")[:2] == ("man", "woman")
    assert vocab.word_list("number") == ("two", "three")
    with pytest.raises(KeyError, match="no sub-category 'desert'"):
        vocab.keywords("scenery", "desert")
    with pytest.raises(KeyError, match="not a hierarchy category"):
        vocab.subcategories("human")
    with pytest.raises(KeyError, match="not a word list"):
        vocab.word_list("scenery")


def test_vocabulary_is_read_only():
    vocab = Vocabulary.from_dict(small_vocab_dict())
    with pytest.raises(TypeError):
        vocab.hierarchy["scenery"]["new"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        vocab.labels = ()  # type: ignore[misc]


def test_flat_labels_filter_by_pos_in_file_order():
    vocab = Vocabulary.from_dict(small_vocab_dict())
    flat = vocab.flat_labels()
    assert len(flat) == 1000
    assert flat[: len(_HEAD)] == tuple(_HEAD)
    by_keyword = {label.keyword: label for label in vocab.labels}
    assert all(by_keyword[w].pos in ("NOUN", "ADV", "ADJ") for w in flat)
    positions = [i for i, label in enumerate(vocab.labels) if label.keyword in set(flat)]
    assert [vocab.labels[i].keyword for i in positions] == list(flat)  # file order
    assert vocab.flat_labels(3, pos=("VERB",)) == ("word0", "word7", "word14")  # i % 7 == 3 -> word(i-10)
    assert vocab.flat_labels(5000) == tuple(
        w.keyword for w in vocab.labels if w.pos in ("NOUN", "ADV", "ADJ")
    )


def test_empty_keyword_lists_are_kept():
    """The published data has empty lists (scenery/grassland, weather/thunder...): not an error."""
    vocab = Vocabulary.from_dict(small_vocab_dict())
    assert vocab.keywords("weather", "sunny") == ()
    assert vocab.keywords("activity", "sleeping") == ()


def test_importing_vocab_does_not_import_torch():
    code = "import sys, icg.sbg.vocab; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# ---------------------------------------------------------------------------------------- validation


def test_unknown_top_level_category(tmp_path):
    data = small_vocab_dict()
    data["encyclopedia"]["vehicles"] = {"car": ["sedan"]}
    assert "unknown encyclopedia categories ['vehicles']" in _error(tmp_path, data)


@pytest.mark.parametrize("category", CATEGORIES)
def test_missing_required_category(tmp_path, category):
    data = small_vocab_dict()
    del data["encyclopedia"][category]
    assert f"lacks the required categories ['{category}']" in _error(tmp_path, data)


@pytest.mark.parametrize("category", HIERARCHY_CATEGORIES)
def test_category_without_subcategories(tmp_path, category):
    data = small_vocab_dict()
    data["encyclopedia"][category] = {}
    assert f"encyclopedia['{category}'] has no sub-categories" in _error(tmp_path, data)


def test_empty_word_list_and_empty_labels(tmp_path):
    data = small_vocab_dict()
    data["encyclopedia"]["human"] = []
    assert "encyclopedia['human'] is empty" in _error(tmp_path, data)
    data = small_vocab_dict()
    data["labels"] = []
    assert "label list is empty" in _error(tmp_path, data)


def test_duplicate_subcategory_in_json(tmp_path):
    text = json.dumps(small_vocab_dict()).replace('"sky": [', '"beach": ["x"], "sky": [', 1)
    path = tmp_path / "vocabulary.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(VocabularyError, match="^" + re.escape(f"{path}: duplicate key 'beach'")):
        Vocabulary.from_json(path)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["labels"].__setitem__(3, ["dog", "NOUN"]), "label 3 must be [keyword, pos, frequency]"),
        (lambda d: d["labels"].__setitem__(3, "dog"), "label 3 must be [keyword, pos, frequency]"),
        (lambda d: d["labels"].__setitem__(3, ["dog", "NOUN", "7"]), "label 3 ('dog') frequency"),
        (lambda d: d["labels"].__setitem__(3, ["dog", "NOUN", True]), "label 3 ('dog') frequency"),
        (lambda d: d["labels"].__setitem__(3, [7, "NOUN", 1]), "label 3 keyword must be a string"),
        (lambda d: d["labels"].__setitem__(3, ["", "NOUN", 1]), "label 3 keyword must be non-empty"),
        (lambda d: d.__setitem__("labels", {"dog": 1}), "labels must be a list"),
        (lambda d: d["encyclopedia"].__setitem__("scenery", ["sky"]), "encyclopedia['scenery'] must map"),
        (
            lambda d: d["encyclopedia"]["scenery"].__setitem__("sky", "cloud"),
            "['sky'] must be a list of strings",
        ),
        (
            lambda d: d["encyclopedia"]["scenery"]["sky"].append(3),
            "encyclopedia['scenery']['sky'][5] must be a",
        ),
        (lambda d: d["encyclopedia"]["scenery"].__setitem__(" sky", []), "no surrounding spaces"),
        (lambda d: d["encyclopedia"].__setitem__("human", "man"), "encyclopedia['human'] must be a list"),
        (lambda d: d["encyclopedia"]["number"].append(None), "encyclopedia['number'][2] must be a string"),
        (lambda d: d.__setitem__("encyclopedia", []), "encyclopedia must be a mapping"),
        (lambda d: d.__setitem__("format", "other"), "'format' must be 'icg-sbg-vocabulary'"),
        (lambda d: d.__setitem__("version", 2), "unsupported vocabulary version 2"),
        (lambda d: d.__setitem__("extra", 1), "unknown top-level key(s) ['extra']"),
        (lambda d: d.pop("labels"), "missing top-level key(s) ['labels']"),
    ],
)
def test_wrong_types_are_named(tmp_path, mutate, expected):
    data = small_vocab_dict()
    mutate(data)
    assert expected in _error(tmp_path, data)


def test_not_an_object_not_json_not_there(tmp_path):
    assert "must be a JSON object, got list" in _error(tmp_path, [1, 2])
    path = tmp_path / "broken.json"
    path.write_text('{"format": ', encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"broken\.json: not valid JSON \(line 1"):
        Vocabulary.from_json(path)
    with pytest.raises(VocabularyError, match=r"missing\.json: can't read the vocabulary"):
        Vocabulary.from_json(tmp_path / "missing.json")


def test_from_dict_names_its_source():
    data = small_vocab_dict()
    data["encyclopedia"]["time"] = {}
    with pytest.raises(VocabularyError, match=r"^somewhere: encyclopedia\['time'\] has no sub-categories"):
        Vocabulary.from_dict(data, source="somewhere")


# ---------------------------------------------------------------------------------------- conversion


def _published_objects(data: dict) -> tuple[list, dict]:
    """The two objects in the layout of all_labels.pkl (tuples) and encyclopedia.pkl."""
    return [tuple(label) for label in data["labels"]], copy.deepcopy(data["encyclopedia"])


def test_convert_pickles(tmp_path):
    data = small_vocab_dict()
    labels, encyclopedia = _published_objects(data)
    (tmp_path / "all_labels.pkl").write_bytes(pickle.dumps(labels))
    (tmp_path / "encyclopedia.pkl").write_bytes(pickle.dumps(encyclopedia))
    out = tmp_path / "models" / "vocabulary.json"
    vocab = convert_pickles(tmp_path / "all_labels.pkl", tmp_path / "encyclopedia.pkl", out)
    stored = json.loads(out.read_text(encoding="utf-8"))
    assert stored == data
    assert vocab.to_dict() == data
    assert vocab.source == str(out)


def test_convert_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    labels, encyclopedia = _published_objects(small_vocab_dict())
    encyclopedia["human"].append(Evil())
    (tmp_path / "all_labels.pkl").write_bytes(pickle.dumps(labels))
    (tmp_path / "encyclopedia.pkl").write_bytes(pickle.dumps(encyclopedia))
    out = tmp_path / "vocabulary.json"
    with pytest.raises(UnsafePickleError, match=r"encyclopedia\.pkl: refused to load the global"):
        convert_pickles(tmp_path / "all_labels.pkl", tmp_path / "encyclopedia.pkl", out)
    assert not marker.exists()
    assert not out.exists()


def test_convert_names_the_pickle_with_the_problem(tmp_path):
    labels, encyclopedia = _published_objects(small_vocab_dict())
    labels[2] = ("beach", "NOUN")
    del encyclopedia["time"]
    (tmp_path / "all_labels.pkl").write_bytes(pickle.dumps(labels))
    (tmp_path / "encyclopedia.pkl").write_bytes(pickle.dumps(encyclopedia))
    with pytest.raises(VocabularyError, match=r"all_labels\.pkl: label 2 must be"):
        convert_pickles(tmp_path / "all_labels.pkl", tmp_path / "encyclopedia.pkl", tmp_path / "v.json")
    labels[2] = ("beach", "NOUN", 3)
    (tmp_path / "all_labels.pkl").write_bytes(pickle.dumps(labels))
    with pytest.raises(VocabularyError, match=r"encyclopedia\.pkl: the encyclopedia lacks .*'time'"):
        convert_pickles(tmp_path / "all_labels.pkl", tmp_path / "encyclopedia.pkl", tmp_path / "v.json")
    assert not (tmp_path / "v.json").exists()
