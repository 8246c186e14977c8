"""The functions behind the panels' buttons, callable without a browser (and without gradio, except where a
result must be a ``gr.update`` or an error must become a ``gr.Error``).

Each controller takes a ``CaptionService`` and returns plain values in the order of the panel's outputs,
so the tests (and a host that builds its own layout) call them directly.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from icg.captioners.result import CaptionResult
from icg.errors import ConfigError, IcgError
from icg.options import BATCH_TEMPLATE, DEFAULT_TEMPLATE, MAX_DRAWN_SEED, MODEL_DEFAULT, STRATEGIES
from icg.prompt import PromptTemplate, split_parts

logger = logging.getLogger(__name__)

STRATEGY_CHOICES = (MODEL_DEFAULT, *STRATEGIES)
CANDIDATE_HEADERS = ["#", "candidate", "score"]
MAX_SEED = MAX_DRAWN_SEED


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Show an ``IcgError`` as a message in the page (``gr.Error``) instead of a generic "Error"."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except IcgError as err:
            raise _gradio_error(err) from err

    return wrapper


def _gradio_error(err: BaseException) -> Exception:
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - handlers called without gradio installed
        return err if isinstance(err, Exception) else RuntimeError(str(err))
    return gr.Error(str(err))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A Dataframe value that keeps its headers when empty (gradio 3.41 drops them for ``[]``)."""
    return {"headers": list(headers), "data": [list(row) for row in rows]}


# ------------------------------------------------------------------------------------------ decoding
@dataclass(frozen=True)
class DecodingInputs:
    """The decoding controls as the panel passes them (numbers or the text of a box); None or an empty box
    keeps the model's default."""

    strategy: str | None = MODEL_DEFAULT
    num_beams: float | str | None = None
    temperature: float | str | None = None
    top_k: float | str | None = None
    top_p: float | str | None = None
    max_new_tokens: float | str | None = None
    seed: float | str | None = -1
    num_samples: float | str | None = None

    def overrides(self, rng: random.Random | None = None, draw_seed: bool = True) -> dict[str, Any]:
        """DecodingConfig overrides. Seed -1 draws a fresh seed (reported with the result, so a good
        caption can be reproduced), or with ``draw_seed=False`` leaves the seed to the model (a folder
        run: SBG then draws one per batch and the manifest records it); an empty seed keeps the model's."""
        out: dict[str, Any] = {}
        if self.strategy and self.strategy != MODEL_DEFAULT:
            out["strategy"] = str(self.strategy)
        for name in ("num_beams", "top_k", "max_new_tokens", "num_samples"):
            value = _whole(getattr(self, name), name)
            if value is not None:
                out[name] = value
        for name in ("temperature", "top_p"):
            value = _number(getattr(self, name), name)
            if value is not None:
                out[name] = float(value)
        seed = _whole(self.seed, "seed")
        if seed is not None:
            if seed >= 0:
                out["seed"] = int(seed)
            elif draw_seed:
                out["seed"] = (rng or random.SystemRandom()).randint(0, MAX_SEED)
        return out


def _number(value: Any, name: str) -> float | None:
    """A number from a text box or a number field; None for an empty box."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name.replace('_', ' ')} must be a number, not {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name.replace('_', ' ')} must be a finite number, not {value!r}")
    return number


def _whole(value: Any, name: str) -> int | None:
    number = _number(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise ConfigError(f"{name.replace('_', ' ')} must be a whole number, not {value!r}")
    return int(number)


# ------------------------------------------------------------------------------------------ caption
@dataclass(frozen=True)
class PromptInputs:
    template: str = DEFAULT_TEMPLATE
    prefix: str = ""
    suffix: str = ""
    lowercase: bool = False

    def compose(self, caption: str, keywords: str) -> str:
        template = PromptTemplate(
            template=self.template or "{caption}",
            prefix=self.prefix or "",
            suffix=self.suffix or "",
            lowercase=bool(self.lowercase),
        )
        return template.compose(caption or "", split_parts(keywords or ""))


@dataclass(frozen=True)
class CaptionOutputs:
    """What a caption shows, in the order of ``CaptionPanel.outputs``."""

    caption: str
    info: str
    candidates: dict[str, Any]
    keywords: str
    prompt: str

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.caption, self.info, self.candidates, self.keywords, self.prompt)


def describe(result: CaptionResult) -> str:
    """One line about how a caption was made: model, decoding, seed, time per stage."""
    decoding = result.decoding or {}
    strategy = decoding.get("strategy", "?")
    parts = [result.model, strategy]
    if strategy == "beam":
        parts.append(f"{decoding.get('num_beams')} beams")
    elif strategy == "sample":
        parts.append(f"{decoding.get('num_samples')} samples")
    if result.seed is not None and strategy == "sample":
        parts.append(f"seed {result.seed}")
    if result.timings:
        total = sum(v for v in result.timings.values() if isinstance(v, (int, float)))
        parts.append(f"{total:.2f} s")
    if result.candidates and result.score_kind:
        parts.append(f"scores: {result.score_kind}")
    return " · ".join(str(p) for p in parts)


class CaptionController:
    """Caption, Regenerate (from keywords) and prompt composition for the Caption panel."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def caption(
        self, image: Any, model: str, decoding: DecodingInputs, prompt: PromptInputs
    ) -> CaptionOutputs:
        result = self.service.caption(image, _model(model), decoding.overrides())
        return self.outputs(result, prompt)

    def regenerate(
        self, keywords: str, image: Any, model: str, decoding: DecodingInputs, prompt: PromptInputs
    ) -> CaptionOutputs:
        words = split_parts((keywords or "").replace("###", ""))
        result = self.service.caption_keywords(words, _model(model), decoding.overrides(), image=image)
        return self.outputs(result, prompt, keywords=", ".join(words))

    @staticmethod
    def outputs(result: CaptionResult, prompt: PromptInputs, keywords: str | None = None) -> CaptionOutputs:
        if keywords is None:
            keywords = ", ".join(k.text for k in result.keywords)
        rows = [
            [rank, c.text, None if c.score is None else round(float(c.score), 4)]
            for rank, c in enumerate(result.candidates, 1)
        ]
        return CaptionOutputs(
            caption=result.caption,
            info=describe(result),
            candidates=table(CANDIDATE_HEADERS, rows),
            keywords=keywords,
            prompt=_compose(prompt, result.caption, keywords),
        )

    # Flat signatures for gradio (inputs are positional, in the panel's order); user errors -> gr.Error.
    @user_errors
    def caption_event(self, image, model, *values):
        decoding, prompt = _split_values(values)
        return self.caption(image, model, decoding, prompt).as_tuple()

    @user_errors
    def regenerate_event(self, keywords, image, model, *values):
        decoding, prompt = _split_values(values)
        return self.regenerate(keywords, image, model, decoding, prompt).as_tuple()

    @staticmethod
    def compose_event(caption, keywords, template, prefix, suffix, lowercase):
        """The prompt for the current caption and keywords; a template error is shown in the box."""
        return _compose(PromptInputs(template, prefix, suffix, lowercase), caption, keywords)


def _compose(prompt: PromptInputs, caption: str, keywords: str) -> str:
    """The prompt, or the template's error in its place (a caption is never lost to a template typo)."""
    try:
        return prompt.compose(caption, keywords)
    except ConfigError as err:
        return f"(template error: {err})"


def _model(model: Any) -> str:
    if not model or not str(model).strip():
        raise ConfigError("no model chosen")
    return str(model).strip()


_N_DECODING = len(fields(DecodingInputs))


def _split_values(values: Sequence[Any]) -> tuple[DecodingInputs, PromptInputs]:
    decoding = DecodingInputs(*values[:_N_DECODING])
    prompt = PromptInputs(*values[_N_DECODING : _N_DECODING + 4])
    return decoding, prompt


# ------------------------------------------------------------------------------------------ batch
RESULT_HEADERS = ["image", "action", "caption", "written / error"]
PREVIEW_HEADERS = ["image", "would do", "caption", "would write"]
#: The results table shows the latest rows only (a folder may hold thousands of images).
MAX_RESULT_ROWS = 500


@dataclass(frozen=True)
class BatchInputs:
    """The Batch panel's fields as the panel passes them (strings straight from the text boxes)."""

    folder: str = ""
    model: str = ""
    recursive: bool = True
    extensions: str = ""
    sidecar_extension: str = ".txt"
    output_dir: str = ""
    policy: str = "skip"
    separator: str = ""
    write_sidecars: bool = True
    manifest: str = ""
    resume: bool = True
    batch_size: float | str | None = 0
    template: str = BATCH_TEMPLATE
    prefix: str = ""
    suffix: str = ""
    lowercase: bool = False
    max_keywords: float | str | None = ""
    keep_period: bool = False
    dry_run: bool = False
    preview: float | str | None = 3


N_BATCH_INPUTS = len(fields(BatchInputs))


@dataclass
class BatchJob:
    """A folder run in a background thread, observed by the panel's generator."""

    options: Any
    stop_requested: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    progress: tuple[int, int, dict[str, Any]] | None = None
    results: deque = field(default_factory=lambda: deque(maxlen=MAX_RESULT_ROWS))
    summary: Any = None
    error: str | None = None
    thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_result(self, result: Any) -> None:
        with self._lock:
            self.results.append(result)

    def latest_results(self) -> list[Any]:
        with self._lock:
            return list(self.results)

    def stop(self) -> None:
        self.stop_requested.set()

    @property
    def running(self) -> bool:
        return not self.done_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class BatchController:
    """Start, watch and stop folder runs for the Batch panel; one run at a time per controller.

    ``defaults.allow_folders`` False fixes the folder, output folder and manifest to the defaults' values
    (whatever the page sends), as the WebUI's ``--hide-ui-dir-config`` requires.
    """

    def __init__(self, service: Any, defaults: Any = None, interval: float = 0.5) -> None:
        self.service = service
        self.defaults = defaults
        self.interval = interval
        self._lock = threading.Lock()
        self.job: BatchJob | None = None

    # ------------------------------------------------------------------------------ options
    def options(self, inputs: BatchInputs, decoding: DecodingInputs) -> Any:
        from icg.batch.engine import BatchOptions

        folder, output_dir, manifest = inputs.folder, inputs.output_dir, inputs.manifest
        if self.defaults is not None and not getattr(self.defaults, "allow_folders", True):
            folder = self.defaults.batch_folder
            output_dir = self.defaults.output_folder
            manifest = self.defaults.manifest
        folder = (folder or "").strip()
        if not folder:
            raise ConfigError("no folder: type the path of a folder of images")
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"{root}: no such folder")
        extensions = split_parts((inputs.extensions or "").replace(" ", ","))
        batch_size = _whole(inputs.batch_size, "batch size")
        max_keywords = _whole(inputs.max_keywords, "max keywords")
        preview = _whole(inputs.preview, "preview")
        return BatchOptions(
            root=root,
            model=_model(inputs.model),
            recursive=bool(inputs.recursive),
            extensions=tuple(extensions) or None,
            batch_size=batch_size if batch_size and batch_size > 0 else None,
            sidecar_extension=(inputs.sidecar_extension or ".txt").strip(),
            output_dir=_optional_path(output_dir),
            policy=inputs.policy or "skip",
            separator=_separator(inputs.separator),
            write_sidecars=bool(inputs.write_sidecars),
            manifest=_optional_path(manifest),
            resume=bool(inputs.resume),
            template=PromptTemplate(
                template=inputs.template or BATCH_TEMPLATE,
                prefix=inputs.prefix or "",
                suffix=inputs.suffix or "",
                lowercase=bool(inputs.lowercase),
                max_keywords=max_keywords,
                strip_period=not inputs.keep_period,
            ),
            decoding=decoding.overrides(draw_seed=False),
            dry_run=bool(inputs.dry_run),
            preview=max(0, 3 if preview is None else preview),
        )

    # ------------------------------------------------------------------------------ running
    def start(self, options: Any) -> BatchJob:
        """Run ``options`` in a background thread; refuses while another run of this panel is going."""
        with self._lock:
            if self.job is not None and self.job.running:
                raise ConfigError(
                    f"a batch is already running on {self.job.options.root}; stop it or wait for it to end"
                )
            job = BatchJob(options)
            job.thread = threading.Thread(target=self._run, args=(job,), name="icg-batch", daemon=True)
            self.job = job
        job.thread.start()
        return job

    def _run(self, job: BatchJob) -> None:
        def on_progress(done: int, total: int, info: dict[str, Any]) -> None:
            job.progress = (done, total, dict(info))

        try:
            job.summary = self.service.run_batch(
                job.options,
                on_progress=on_progress,
                should_stop=job.stop_requested.is_set,
                on_result=job.add_result,
            )
        except IcgError as err:
            job.error = str(err)
        except Exception as err:  # noqa: BLE001 - reported in the page, logged with its traceback
            logger.exception("batch run on %s failed", job.options.root)
            job.error = f"{type(err).__name__}: {err}"
        finally:
            job.done_event.set()

    def stop(self) -> str:
        """Ask the running batch to stop after its current images (everything written so far is kept)."""
        job = self.job
        if job is None or not job.running:
            return "No batch is running."
        job.stop()
        return "Stopping after the current images..."

    # ------------------------------------------------------------------------------ display
    @staticmethod
    def render(job: BatchJob) -> tuple[str, dict[str, Any]]:
        """The progress text and the results table of ``job`` as it stands."""
        if job.running:
            return _progress_text(job), _results_table(job)
        if job.error is not None:
            return f"Error: {job.error}", _results_table(job)
        summary = job.summary
        if summary is not None and getattr(summary, "dry_run", False):
            return _dry_run_text(summary), _preview_table(summary)
        return _summary_text(summary), _results_table(job)

    # Flat signatures for gradio.
    def run_event(self, *values: Any) -> Iterator[tuple[Any, ...]]:
        """Generator handler of the Start button: streams (progress, results, start button)."""
        import gradio as gr

        inputs = BatchInputs(*values[:N_BATCH_INPUTS])
        decoding = DecodingInputs(*values[N_BATCH_INPUTS : N_BATCH_INPUTS + _N_DECODING])
        try:
            job = self.start(self.options(inputs, decoding))
        except IcgError as err:
            yield f"Error: {err}", table(RESULT_HEADERS, []), gr.update(interactive=True)
            return
        yield "Starting...", table(RESULT_HEADERS, []), gr.update(interactive=False)
        for progress, results in stream_job(job, self.render, self.interval):
            yield progress, results, gr.update(interactive=not job.running)

    def stop_event(self) -> str:
        return self.stop()


def stream_job(job: BatchJob, render: Callable[[BatchJob], Any], interval: float = 0.5) -> Iterator[Any]:
    """Yield ``render(job)`` every ``interval`` seconds until the job ends, then once more."""
    while not job.wait(interval):
        yield render(job)
    yield render(job)


def _separator(value: Any) -> str | None:
    """What joins old text and the caption on append/prepend: empty means a new line; the two
    characters ``\\n`` typed in a one-line box also mean a new line."""
    if not value:
        return None
    return str(value).replace("\\n", "\n")


def _optional_path(value: Any) -> Path | None:
    text = (value or "").strip() if isinstance(value, str) else value
    return Path(text).expanduser() if text else None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _progress_text(job: BatchJob) -> str:
    stopping = " (stopping after the current images)" if job.stop_requested.is_set() else ""
    if job.progress is None:
        return f"Loading the model and reading {job.options.root}...{stopping}"
    done, total, info = job.progress
    parts = [f"{done} / {total} images"]
    rate = info.get("images_per_second") or 0.0
    if rate:
        parts.append(f"{rate:.2f} images/s")
        parts.append(f"ETA {_clock(info.get('eta'))}")
    parts.append(f"elapsed {_clock(info.get('elapsed'))}")
    if info.get("failed"):
        parts.append(f"{info['failed']} failed")
    if info.get("skipped"):
        parts.append(f"{info['skipped']} skipped")
    text = " · ".join(parts) + stopping
    if info.get("current"):
        text += f"\nlast: {info['current']}"
    return text


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n)


def _failures_text(summary: Any, limit: int = 20) -> str:
    failures = list(getattr(summary, "failures", ()) or ())
    if not failures:
        return ""
    lines = [f"\nFailed ({len(failures)}):"] + [f"  {f.key}: {f.reason}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return "\n".join(lines)


def _summary_text(summary: Any) -> str:
    if summary is None:
        return "Finished."
    head = "Stopped" if summary.stopped else "Done"
    seconds = summary.seconds.get("total", 0.0)
    text = (
        f"{head}: {summary.processed} of {summary.planned} images to caption in {seconds:.1f} s "
        f"({summary.images_per_second:.2f} images/s); {summary.total} found in {summary.root}."
    )
    counts = _counts_text(summary.counts)
    if counts:
        text += f"\n{counts}."
    if summary.manifest:
        text += f"\nManifest: {summary.manifest}"
    return text + _failures_text(summary)


def _dry_run_text(summary: Any) -> str:
    plan = _counts_text(summary.plan_counts) or "nothing"
    text = (
        f"Dry run (nothing written): {summary.total} images found in {summary.root}; "
        f"{summary.planned} to caption.\nPlan: {plan}."
    )
    if summary.preview:
        text += f"\nPreview of the first {len(summary.preview)} captions below."
    return text + _failures_text(summary)


def _results_table(job: BatchJob) -> dict[str, Any]:
    rows = [
        [r.key, r.action, r.caption, r.error if r.error else (r.sidecar or "manifest")]
        for r in job.latest_results()
    ]
    return table(RESULT_HEADERS, rows)


def _preview_table(summary: Any) -> dict[str, Any]:
    rows = [[p.key, p.action, p.caption, p.text] for p in summary.preview]
    return table(PREVIEW_HEADERS, rows)


__all__ = [
    "CANDIDATE_HEADERS",
    "RESULT_HEADERS",
    "BatchController",
    "BatchInputs",
    "MODEL_DEFAULT",
    "STRATEGY_CHOICES",
    "BatchJob",
    "CaptionController",
    "CaptionOutputs",
    "DecodingInputs",
    "PromptInputs",
    "describe",
    "stream_job",
    "table",
    "user_errors",
]
