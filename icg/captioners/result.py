"""What every captioner returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Candidate:
    text: str
    score: float | None = None  # higher is better; its meaning is in CaptionResult.score_kind


@dataclass
class Keyword:
    text: str
    score: float
    step: str  # which step of the keyword selection chose it (SBG)


@dataclass
class CaptionResult:
    """A caption and everything needed to reproduce or explain it."""

    caption: str
    model: str
    candidates: list[Candidate] = field(default_factory=list)
    score_kind: str | None = None  # e.g. "logprob" (beam/sample), "clip" (SBG re-ranking)
    keywords: list[Keyword] = field(default_factory=list)
    decoding: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, per image
    source: str | None = None  # the image path, when there was one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
