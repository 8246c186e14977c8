"""The one schema of the user's options, and the defaults every front end shares.

Each decoding, template and batch option is declared here once: its name, type, default, bounds, help
text and label. The CLI's arguments (``icg.commands.common``), the API's request models (``icg.api``),
the Gradio controls (``icg.ui``) and the WebUI's settings (``icg.webui``) are rendered from these
records, and ``tests/test_options.py`` fails when a front end drifts from them. Adding a decoding option
is a change to this file (and to the decoder that reads it).

``Option.default`` is the value used when neither the user nor the model gives one; front ends send
only what the user changed (``None`` means "the model's default"). ``Option.check`` is the one place
values are validated: every front end and ``DecodingConfig`` go through it, so an error names the option
and its bounds the same way everywhere.

This module imports nothing but the standard library and ``icg.errors``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from icg.errors import ConfigError

# ---------------------------------------------------------------------------------- shared constants
DEFAULT_MODEL = "clip-prefix-flickr8k"
#: Shown where a control is left to the model's own default.
MODEL_DEFAULT = "model default"
STRATEGIES = ("greedy", "beam", "sample")
CAPTION_STYLES = ("clean", "published")
POLICIES = ("skip", "overwrite", "append", "prepend")
#: The prompt of the Caption tab and the API: caption, keywords, and the user's prefix and suffix.
DEFAULT_TEMPLATE = "{prefix}, {caption}, {keywords}, {suffix}"
#: What a folder batch writes into each caption file: the caption (keywords only when asked for).
BATCH_TEMPLATE = "{prefix}, {caption}, {suffix}"
#: The same with the SBG keywords after the caption (``icg batch --keywords``).
KEYWORDS_TEMPLATE = "{prefix}, {caption}, {keywords}, {suffix}"
#: Seeds drawn for the user (so a good caption can be reproduced) stay below this.
MAX_DRAWN_SEED = 2**31 - 1
RANDOM_SEED = -1  # the front ends' "draw a new seed"


@dataclass(frozen=True)
class Option:
    """One user option. ``minimum``/``maximum`` are inclusive unless ``above`` is set (then the value
    must be greater than ``minimum``). A ``maximum`` is what a front end accepts (it keeps a request from
    asking for unbounded work); the library itself only enforces it where ``strict`` is set (a value
    past it is meaningless, as a top-p above 1). ``flag`` is the CLI flag (default ``--name-with-dashes``)."""

    name: str
    type: type
    default: Any
    help: str
    label: str
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    strict: bool = False
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()  # more CLI flags for the same option
    step: float | None = None  # a slider's step in the UI
    max_length: int | None = None  # strings

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        """``"1 to 16"``, ``"greater than 0 and at most 1"``, ``"one of greedy, beam, sample"`` or ``""``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low, high = _show(self.minimum), _show(self.maximum)
        if self.minimum is not None and self.maximum is not None:
            return f"greater than {low} and at most {high}" if self.above else f"{low} to {high}"
        if self.minimum is not None:
            return f"greater than {low}" if self.above else f"at least {low}"
        if self.maximum is not None:
            return f"at most {high}"
        return ""

    def check(self, value: Any, where: str = "", *, front_end: bool = True) -> Any:
        """``value`` converted to this option's type (from a number or the text of a box) and checked
        against its bounds (``front_end=False``: the library's own checks, where a non-strict maximum does
        not apply); ``ConfigError`` naming the option otherwise. ``None`` passes through."""
        if value is None:
            return None
        place = f"{where}: " if where else ""
        converted = _convert(self, value)
        if converted is None:
            raise ConfigError(f"{place}{self.name} must be {_type_text(self)}, not {value!r}")
        if self.choices and converted not in self.choices:
            raise ConfigError(f"{place}{self.name} must be {self.bounds_text()}, not {value!r}")
        if self.type in (int, float):
            too_low = self.minimum is not None and (
                converted <= self.minimum if self.above else converted < self.minimum
            )
            capped = self.maximum is not None and (front_end or self.strict)
            too_high = capped and converted > self.maximum
            if too_low or too_high:
                raise ConfigError(f"{place}{self.name} must be {self.bounds_text()}, not {value!r}")
        if self.max_length is not None and isinstance(converted, str) and len(converted) > self.max_length:
            raise ConfigError(f"{place}{self.name} is longer than {self.max_length} characters")
        return converted


def _show(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else str(number)


def _type_text(option: Option) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}[option.type]


def _convert(option: Option, value: Any) -> Any:
    """``value`` as ``option.type``, or None when it isn't one (booleans are not numbers here)."""
    kind = option.type
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text)
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        return value
    return float(value)


@dataclass(frozen=True)
class OptionGroup:
    """An ordered set of options, looked up by name."""

    name: str
    title: str
    options: tuple[Option, ...]
    _by_name: dict[str, Option] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {o.name: o for o in self.options})

    def __iter__(self):
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check(self, values: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
        """The given (non-None) values, each converted and checked; unknown names are refused."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(self._by_name))
        if unknown:
            place = f" in {where}" if where else ""
            raise ConfigError(f"unknown {self.name} option(s){place}: {', '.join(unknown)}")
        out = {}
        for name, value in values.items():
            checked = self._by_name[name].check(value, where)
            if checked is not None:
                out[name] = checked
        return out

    def pick(self, source: Any) -> dict[str, Any]:
        """The values of this group's options found on ``source`` (a mapping or an object with
        attributes, e.g. parsed arguments), leaving out what is missing or None."""
        get = source.get if isinstance(source, Mapping) else lambda n: getattr(source, n, None)
        return {n: get(n) for n in self.names if get(n) is not None}


# ---------------------------------------------------------------------------------- decoding
DECODING = OptionGroup(
    "decoding",
    "Decoding",
    (
        Option("strategy", str, "greedy", "greedy (the published decoding), beam search, or sampling",
               "Decoding strategy", choices=STRATEGIES),
        Option("num_beams", int, 5, "beams for beam search", "Beams", 1, 16, flag="--beams", step=1),
        Option("num_samples", int, 1, "captions to sample (SBG: candidates to write and re-rank)",
               "Candidates", 1, 32, flag="--samples", aliases=("--candidates",), step=1),
        Option("top_k", int, 0, "sample only from the k likeliest tokens (0: off)", "Top-k", 0, 1000,
               step=1),
        Option("top_p", float, 1.0, "sample from the smallest set of tokens holding this probability",
               "Top-p", 0.0, 1.0, above=True, strict=True, step=0.01),
        Option("temperature", float, 1.0, "sampling temperature (higher: more varied)", "Temperature",
               0.0, 10.0, above=True, step=0.05),
        Option("max_new_tokens", int, 67, "the longest caption, in tokens", "Longest caption (tokens)",
               1, 256, step=1),
        Option("repetition_penalty", float, 1.0, "divide the scores of tokens already written (1: off)",
               "Repetition penalty", 0.0, 10.0, above=True, step=0.05),
        Option("no_repeat_ngram_size", int, 0, "never repeat a run of this many tokens (0: off)",
               "No repeated n-grams", 0, 16, flag="--no-repeat-ngram", step=1),
        Option("length_penalty", float, 1.0, "beam search: above 1 favours longer captions",
               "Length penalty", -10.0, 10.0, step=0.1),
        Option("seed", int, None, "seed for sampling (-1: draw a new one, reported with the result)",
               "Seed", RANDOM_SEED, 2**63 - 1),
    ),
)

# ---------------------------------------------------------------------------------- caption
CAPTION = OptionGroup(
    "caption",
    "Caption",
    (
        Option("style", str, "clean", "clean: tidy sentence; published: the text exactly as the paper's "
               "code wrote it (for evaluation)", "Caption style", choices=CAPTION_STYLES),
    ),
)

# ---------------------------------------------------------------------------------- prompt template
MAX_TEXT = 2000
MAX_KEYWORDS = 200

TEMPLATE = OptionGroup(
    "template",
    "Prompt",
    (
        Option("template", str, DEFAULT_TEMPLATE, "uses {prefix} {caption} {keywords} {suffix}",
               "Prompt template", max_length=MAX_TEXT),
        Option("prefix", str, "", "text before the caption (e.g. a LoRA trigger word)", "Prefix",
               max_length=MAX_TEXT),
        Option("suffix", str, "", "text after the caption", "Suffix", max_length=MAX_TEXT),
        Option("lowercase", bool, False, "lower-case the caption and keywords", "Lower-case"),
        Option("dedupe", bool, True, "drop repeated parts of the prompt", "Drop repeats"),
        Option("max_keywords", int, None, "at most this many keywords", "Most keywords", 0, MAX_KEYWORDS,
               step=1),
        Option("strip_period", bool, True, "remove the caption's final period", "Remove final period"),
    ),
)

# ---------------------------------------------------------------------------------- folder batches
BATCH = OptionGroup(
    "batch",
    "Batch",
    (
        Option("recursive", bool, True, "look into subfolders too", "Include subfolders"),
        Option("policy", str, "skip", "when a caption file exists: skip it, overwrite it, or append or "
               "prepend the caption", "Existing caption files", choices=POLICIES),
        Option("sidecar_extension", str, ".txt", "caption file extension", "Caption file extension",
               flag="--sidecar-ext", max_length=32),
        Option("write_sidecars", bool, True, "write caption files (off: the manifest only)",
               "Write caption files", flag="--sidecars"),
        Option("resume", bool, True, "go on from an existing manifest (off: replace it)",
               "Resume from the manifest"),
        Option("batch_size", int, None, "images per batch (default: 32 on CUDA, 8 on the CPU)",
               "Batch size", 1, 512, step=1),
        Option("preview", int, 3, "captions to preview in a dry run", "Preview", 0, 100, step=1),
    ),
)

# ---------------------------------------------------------------------------------- HTTP API limits
#: The largest image the HTTP API takes, in megapixels: read from the image's header before its pixels
#: are decoded (``icg.api``; more is a 413). Well below the batch limit (``icg.imaging.DEFAULT_MAX_PIXELS``,
#: about 179 MP, the top of this range): requests run in parallel and their images add up. The WebUI
#: renders it as a setting, read per request.
UPLOAD_MAX_MEGAPIXELS = Option(
    "upload_max_megapixels", int, 40, "an image sent to the HTTP API with more pixels is refused before "
    "it is decoded (parallel requests add up)", "HTTP API: largest image (megapixels)", 1, 178, step=1,
)

# ---------------------------------------------------------------------------------- runtime
#: Precisions: float dtypes, and int8 (dynamic quantisation on the CPU, ``icg.quant``).
DTYPES = ("auto", "fp32", "fp16", "bf16", "int8", "int8-clip")

RUNTIME = OptionGroup(
    "runtime",
    "Runtime",
    (
        Option("dtype", str, "auto", "auto: fp16 on CUDA, fp32 elsewhere (never bf16 or int8); bf16 is fast "
               "only on CPUs with AVX512-BF16/AMX; int8: CLIP's image tower and the language model "
               "quantised to int8, int8-clip: CLIP's image tower only (both CPU only, faster, slightly "
               "different captions)", "Precision", choices=DTYPES),
        Option("threads", int, 0, "CPU threads for captioning inside the WebUI (0: all but one from 4 "
               "up, so the WebUI stays responsive)", "CPU threads", 0, 1024, step=1),
    ),
)

# ---------------------------------------------------------------------------------- import
#: What an empty "trained on" answer means in a form: the files (or the registry) decide.
AS_THE_FILES_SAY = "as the files say"

IMPORT = OptionGroup(
    "import",
    "Import",
    (
        Option("clip", str, None, "the CLIP the model was trained on: ARCH/PRETRAINED (ViT-B-32/openai "
               "for the original ClipCap checkpoints), a CLIP model id or folder (default: the model's "
               "own, else ViT-L-14/openai)", "CLIP it was trained on", max_length=500, flag="--clip"),
        Option("normalize", bool, None, "were the CLIP features L2-normalised in training? (default: "
               "yes; the original ClipCap checkpoints: no)", "CLIP features normalised in training"),
    ),
)

GROUPS = (DECODING, CAPTION, TEMPLATE, BATCH, RUNTIME, IMPORT)


def check_values(group: OptionGroup, values: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``group.check`` as a function (for front ends that pass the group around)."""
    return group.check(values, where)


def resolve_seed(seed: int | None, draw: Any = None) -> int | None:
    """A front end's seed: ``-1`` draws a new one with ``draw()`` (default: the system's randomness), so
    the result can report it; ``None`` leaves the seed to the model."""
    if seed is None or seed >= 0:
        return seed
    if draw is not None:
        return int(draw())
    import random

    return random.SystemRandom().randint(0, MAX_DRAWN_SEED)


# ---------------------------------------------------------------------------------- caption options
@dataclass(frozen=True)
class CaptionOptions:
    """What one captioning call should do beyond decoding, passed explicitly to the captioners.

    ``style``: ``clean`` or ``published`` (None: the model's own). SBG only: ``keywords`` replaces the
    keyword selection with the user's words; ``force`` adds words to the selection, ``ban`` removes
    words from it. A captioner that has no keywords refuses ``keywords``/``force``/``ban`` with a
    ``ConfigError`` rather than ignoring them.
    """

    style: str | None = None
    keywords: tuple[str, ...] | None = None
    force: tuple[str, ...] = ()
    ban: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        CAPTION["style"].check(self.style, "caption options")
        for name in ("force", "ban"):
            object.__setattr__(self, name, _words(getattr(self, name), name))
        if self.keywords is not None:
            object.__setattr__(self, "keywords", _words(self.keywords, "keywords"))

    @property
    def uses_keywords(self) -> bool:
        return self.keywords is not None or bool(self.force) or bool(self.ban)


def _words(value: Iterable[str] | str, name: str) -> tuple[str, ...]:
    """Keywords from a list or a comma-separated string: stripped, empty ones dropped."""
    if isinstance(value, str):
        value = value.split(",")
    words = []
    for word in value:
        if not isinstance(word, str):
            raise ConfigError(f"{name}: every keyword must be text, not {word!r}")
        if word.strip():
            words.append(word.strip())
    if len(words) > MAX_KEYWORDS:
        raise ConfigError(f"{name}: at most {MAX_KEYWORDS} keywords, not {len(words)}")
    return tuple(words)


def split_words(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Keywords typed into a box or given on the command line, as ``CaptionOptions`` takes them."""
    return () if text is None else _words(text, "keywords")
