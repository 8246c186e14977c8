"""The metric wrapper against pycocoevalcap's own numbers on a fixed hand-made set.

The expected values were computed once by calling pycocoevalcap 1.2 directly (``PTBTokenizer``, then
``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` on ``tests/data/captions_small.json``; for the seed
protocol the same scorers on the lower-cased raw strings). METEOR starts a JVM that loads its
paraphrase tables (10+ s of CPU): one scorer is shared by the whole module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (the eval extra) is not installed")

from icg.errors import ConfigError
from icg.eval.metrics import (
    METRICS,
    CaptionScorer,
    JavaStatus,
    find_java,
    format_table,
    ptb_tokenize,
    python_ptb_tokenize,
)

DATA = json.loads((Path(__file__).parent / "data" / "captions_small.json").read_text(encoding="utf-8"))
REFS, HYPS = DATA["references"], DATA["hypotheses"]

PTB_EXPECTED = {
    "BLEU-1": 0.7209302325413738,
    "BLEU-2": 0.5843742534001025,
    "BLEU-3": 0.43583228475276903,
    "BLEU-4": 0.3068883161540842,
    "METEOR": 0.272753501616975,
    "ROUGE-L": 0.5575446960003527,
    "CIDEr": 1.562286438322535,
}
SEED_EXPECTED = {
    "BLEU-1": 0.749999999984375,
    "BLEU-2": 0.5906244232055983,
    "BLEU-3": 0.45110717590164456,
    "BLEU-4": 0.3022467435553513,
    "METEOR": 0.2799340555699493,
    "ROUGE-L": 0.6073922402511975,
    "CIDEr": 1.58044611763448,
}

JAVA = find_java()
needs_java = pytest.mark.skipif(not JAVA.available, reason=f"Java is missing ({JAVA.reason}): {JAVA}")


@pytest.fixture(scope="module")
def scorer():
    with CaptionScorer(JAVA) as shared:
        yield shared


def _check(scores, expected, *, meteor: bool):
    for name in METRICS:
        if name == "METEOR" and not meteor:
            assert scores[name] is None
        else:
            assert scores[name] == pytest.approx(expected[name], abs=1e-9), name


@pytest.mark.slow  # METEOR's JVM start; unavoidable to check METEOR itself
@needs_java
def test_ptb_protocol_reproduces_pycocoevalcap(scorer):
    report = scorer.score(REFS, HYPS, tokenization="ptb")
    _check(report.scores, PTB_EXPECTED, meteor=True)
    assert report.notes == [] and report.images == 5 and report.tokenization == "ptb"


def test_seed_protocol_reproduces_pycocoevalcap(scorer):
    report = scorer.score(REFS, HYPS, tokenization="seed")
    _check(report.scores, SEED_EXPECTED, meteor=JAVA.available)
    assert "pycocoevalcap.spice.spice" not in sys.modules  # SPICE is never built


def test_without_java_bleu_rouge_cider_remain_and_the_gaps_are_explained():
    with CaptionScorer(JavaStatus(False, reason="no `java` on the PATH")) as no_java:
        report = no_java.score(REFS, HYPS, tokenization="ptb")
    # the Python stand-in for the PTB tokenizer agrees with it on this plain English
    _check(report.scores, PTB_EXPECTED, meteor=False)
    assert any("PTB tokenization needs Java" in n and "approximation" in n for n in report.notes)
    assert any("METEOR needs Java" in n and "default-jre-headless" in n for n in report.notes)


@needs_java
def test_the_python_ptb_stand_in_matches_the_jar():
    sentences = [c for refs in REFS.values() for c in refs] + list(HYPS.values())
    sentences += ['He said "don\'t go" (twice) -- then left...', "A dog's ball; it's red!"]
    assert [python_ptb_tokenize(s) for s in sentences] == ptb_tokenize(sentences, JAVA)


def test_find_java_reports_a_missing_runtime():
    status = find_java("icg-no-such-java")
    assert not status.available and "icg-no-such-java" in status.reason


def test_bad_input_is_refused(scorer):
    with pytest.raises(ConfigError, match="same ids"):
        scorer.score(REFS, {"dog": "a dog ."}, tokenization="seed")
    with pytest.raises(ConfigError, match="tokenization"):
        scorer.score(REFS, HYPS, tokenization="nltk")
    with pytest.raises(ConfigError, match="SPICE"):
        scorer.score(REFS, HYPS, metrics=("SPICE",))
    with pytest.raises(ConfigError, match="at least one reference"):
        scorer.score({"a": []}, {"a": "x"}, tokenization="seed")


def test_table_in_the_seed_layout():
    table = format_table([("CLIP-prefix", SEED_EXPECTED), ("SBG top-5", {**SEED_EXPECTED, "METEOR": None})])
    lines = table.splitlines()
    assert lines[0].split() == ["Model", *METRICS]
    assert lines[2].split()[1:] == ["0.750", "0.591", "0.451", "0.302", "0.280", "0.607", "1.580"]
    assert lines[3].split()[-3:] == ["-", "0.607", "1.580"]
