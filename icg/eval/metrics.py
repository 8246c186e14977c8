"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr. SPICE is never built
(its constructor downloads Stanford CoreNLP models at start).

Two tokenisations:

- ``ptb`` (the COCO protocol): pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP, lower-cased,
  punctuation dropped) on references and hypotheses;
- ``seed`` (the protocol behind the seed's published table): no tokenizer; captions lower-cased and
  split on whitespace by the scorers, so the final ``" ."`` of Flickr captions counts as a token.

The PTB tokenizer and METEOR run on Java. Without Java (``find_java``), ``ptb`` falls back to a Python
approximation of the PTB tokenizer and METEOR is left out (``None``); each is said in ``notes``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from icg.errors import ConfigError, IcgError

log = logging.getLogger(__name__)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
TOKENIZATIONS = ("seed", "ptb")
#: Tokens pycocoevalcap's PTB wrapper removes after tokenising.
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
INSTALL_HINT = "pip install pycocoevalcap (or: pip install 'icg[eval]')"
JAVA_HINT = "install a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless)"


@dataclass(frozen=True)
class JavaStatus:
    available: bool
    path: str | None = None
    version: str | None = None
    reason: str | None = None


@dataclass
class MetricReport:
    """Corpus-level scores (``None`` where a metric could not be computed) and what to know about them."""

    scores: dict[str, float | None]
    tokenization: str
    images: int
    notes: list[str] = field(default_factory=list)
    java: JavaStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["java"] = None if self.java is None else asdict(self.java)
        return data


def find_java(executable: str = "java", timeout: float = 30.0) -> JavaStatus:
    """Whether a working Java runtime is on the PATH (it runs ``java -version``)."""
    path = shutil.which(executable)
    if path is None:
        return JavaStatus(False, reason=f"no `{executable}` on the PATH")
    try:
        proc = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        return JavaStatus(False, path, reason=f"`{path} -version` failed ({err})")
    text = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0:
        return JavaStatus(
            False, path, reason=f"`{path} -version` exited with {proc.returncode}: {text[:200]}"
        )
    return JavaStatus(True, path, text.splitlines()[0] if text else None)


def python_ptb_tokenize(text: str) -> str:
    """An approximation of pycocoevalcap's PTB step (Stanford PTBTokenizer, ``-lowerCase``, its punctuation
    list dropped) for when Java is missing. It agrees on caption English (contractions, quotes, brackets,
    which the jar writes as ``-lrb-`` and pycocoevalcap keeps); rarer constructs can differ."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"([a-z])n't\b", r"\1 n't", text)
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    text = re.sub(r"(\.\.\.|--)", r" \1 ", text)
    text = re.sub(r"([,;:!?\"`])", r" \1 ", text)
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, f" {name} ")
    text = re.sub(r"(?<![0-9])\.(?![0-9a-z])|\.(?=\s|$)", " . ", text)
    return " ".join(t for t in text.split() if t not in PTB_PUNCTUATIONS and t != '"')


#: How the PTB tokenizer writes brackets (after ``-lowerCase``: pycocoevalcap's list has them upper case,
#: so they stay in the tokenized text).
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def _require_pycocoevalcap():
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as err:
        raise IcgError(
            f"the caption metrics need pycocoevalcap, which is not installed: {INSTALL_HINT}"
        ) from err


class CaptionScorer:
    """Scores caption sets. The METEOR process (a JVM that loads its paraphrase tables: seconds to start)
    is started on first use and reused by every later ``score`` call until ``close``."""

    def __init__(self, java: JavaStatus | None = None) -> None:
        _require_pycocoevalcap()
        self.java = java if java is not None else find_java()
        self._meteor = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            _close_meteor(self._meteor)
            self._meteor = None

    def score(
        self,
        references: Mapping[Hashable, Sequence[str]],
        hypotheses: Mapping[Hashable, str],
        *,
        tokenization: str = "ptb",
        lowercase: bool = True,
        metrics: Sequence[str] = METRICS,
    ) -> MetricReport:
        """Corpus scores of ``hypotheses`` (one caption per id) against ``references`` (captions per id).

        ``lowercase`` applies to the ``seed`` tokenization (PTB always lower-cases)."""
        if tokenization not in TOKENIZATIONS:
            raise ConfigError(f"tokenization must be one of {', '.join(TOKENIZATIONS)}, not {tokenization!r}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        if set(references) != set(hypotheses):
            raise ConfigError("references and hypotheses must cover the same ids")
        if not references:
            raise ConfigError("nothing to score: no captions")
        keys = list(references)
        ids = {key: str(i) for i, key in enumerate(keys)}
        refs = {ids[k]: [_one_line(c) for c in references[k]] for k in keys}
        hyps = {ids[k]: [_one_line(hypotheses[k])] for k in keys}
        if any(not r for r in refs.values()):
            raise ConfigError("every image needs at least one reference caption")
        notes: list[str] = []
        if tokenization == "ptb":
            refs, hyps = self._ptb(refs, hyps, notes)
        elif lowercase:
            refs = {k: [c.lower() for c in v] for k, v in refs.items()}
            hyps = {k: [c.lower() for c in v] for k, v in hyps.items()}
        scores: dict[str, float | None] = {}
        if any(m.startswith("BLEU") for m in metrics):
            from pycocoevalcap.bleu.bleu import Bleu

            bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
            scores.update({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)})
        if "METEOR" in metrics:
            scores["METEOR"] = self._meteor_score(refs, hyps, notes)
        if "ROUGE-L" in metrics:
            from pycocoevalcap.rouge.rouge import Rouge

            scores["ROUGE-L"] = float(Rouge().compute_score(refs, hyps)[0])
        if "CIDEr" in metrics:
            from pycocoevalcap.cider.cider import Cider

            scores["CIDEr"] = float(Cider().compute_score(refs, hyps)[0])
        ordered = {m: scores.get(m) for m in METRICS if m in metrics}
        return MetricReport(ordered, tokenization, len(keys), notes, self.java)

    def _ptb(self, refs, hyps, notes: list[str]):
        if self.java.available:
            try:
                flat = [c for v in refs.values() for c in v] + [c for v in hyps.values() for c in v]
                it = iter(ptb_tokenize(flat, self.java))
                return {k: [next(it) for _ in v] for k, v in refs.items()}, {k: [next(it)] for k in hyps}
            except IcgError as err:
                note = f"{err}; used ICG's Python approximation of the PTB tokenizer"
        else:
            note = (
                f"PTB tokenization needs Java ({self.java.reason}); used ICG's Python approximation of it: "
                f"{JAVA_HINT}"
            )
        log.warning("%s", note)
        notes.append(note)
        return (
            {k: [python_ptb_tokenize(c) for c in v] for k, v in refs.items()},
            {k: [python_ptb_tokenize(c) for c in v] for k, v in hyps.items()},
        )

    def _meteor_score(self, refs, hyps, notes: list[str]) -> float | None:
        if not self.java.available:
            note = f"METEOR needs Java ({self.java.reason}); it is left out: {JAVA_HINT}"
            log.warning("%s", note)
            notes.append(note)
            return None
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            if self._meteor is None:
                self._meteor = Meteor()
            # METEOR answers one line per image, then the corpus score; a dead JVM answers nothing.
            return float(self._meteor.compute_score(refs, hyps)[0])
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            self.close()
            note = f"METEOR failed ({type(err).__name__}: {err}); it is left out"
            log.warning("%s", note)
            notes.append(note)
            return None


def _one_line(text: str) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"captions must be strings, got {type(text).__name__}")
    return " ".join(text.split())


def ptb_tokenize(sentences: Sequence[str], java: JavaStatus, timeout: float = 600.0) -> list[str]:
    """pycocoevalcap's PTB step, line for line: its Stanford CoreNLP jar's ``PTBTokenizer -preserveLines
    -lowerCase``, then its punctuation tokens dropped. Run here rather than through its wrapper so that no
    file is written into the installed package and the tokenizer's progress line stays off the terminal."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="icg-ptb-") as tmp:
        source = Path(tmp) / "sentences.txt"
        source.write_text("\n".join(s.replace("\n", " ") for s in sentences), encoding="utf-8")
        cmd = [
            java.path or "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            "-encoding",
            "utf-8",
            str(source),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            raise IcgError(f"the PTB tokenizer (Java) could not run ({err})") from err
    if proc.returncode != 0:
        raise IcgError(f"the PTB tokenizer (Java) failed: {proc.stderr.decode(errors='replace')[-300:]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise IcgError(f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS)
        for line in lines[: len(sentences)]
    ]


def _close_meteor(meteor) -> None:
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    meteor.meteor_p = _ClosedProcess()


class _ClosedProcess:
    """Stands in for METEOR's process after ``_close_meteor`` so its ``__del__`` finds nothing to do."""

    class _Stream:
        def close(self) -> None:
            return None

    stdin = _Stream()

    def kill(self) -> None:
        return None

    def wait(self) -> int:
        return 0


def format_table(
    rows: Sequence[tuple[str, Mapping[str, float | None]]], metrics: Sequence[str] = METRICS
) -> str:
    """The seed's table layout: one row per model, three decimals, ``-`` for a metric not computed."""
    width = max([len("Model")] + [len(name) for name, _ in rows])
    header = f"{'Model':<{width}}  " + "  ".join(f"{m:>7}" for m in metrics)
    lines = [header, "-" * len(header)]
    for name, scores in rows:
        cells = ["      -" if scores.get(m) is None else f"{scores[m]:>7.3f}" for m in metrics]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
