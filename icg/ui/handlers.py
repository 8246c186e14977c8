"""The functions behind the panels' buttons, callable without a browser (and without gradio, except where a
result must be a ``gr.update`` or an error must become a ``gr.Error``).

Each controller takes a ``CaptionService`` and returns plain values in the order of the panel's outputs,
so the tests (and a host that builds its own layout) call them directly. The inputs are the options of
``icg.options`` by name, checked by ``Option.check``; folder runs are jobs of the process's job registry
(``icg.jobs``), rendered from their snapshots.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from icg import jobs as joblib
from icg.captioners.result import CaptionResult
from icg.errors import ConfigError, IcgError
from icg.options import (
    BATCH,
    BATCH_TEMPLATE,
    CAPTION,
    DECODING,
    DEFAULT_TEMPLATE,
    MAX_DRAWN_SEED,
    MODEL_DEFAULT,
    RANDOM_SEED,
    TEMPLATE,
    CaptionOptions,
    Option,
    resolve_seed,
)
from icg.prompt import PromptTemplate, split_parts

logger = logging.getLogger(__name__)

CANDIDATE_HEADERS = ["#", "candidate", "score"]
MAX_SEED = MAX_DRAWN_SEED


def user_errors(func: Callable[..., Any] | None = None, *, outputs: int = 0) -> Any:
    """Show an ``IcgError`` (an expected user error: no image, a missing model) as a message in the page
    and log it as one line, not a traceback. ``outputs``: how many outputs the event has.

    gradio 5+ takes ``gr.Error(..., print_exception=False)``. gradio 3.41 and 4.40 (A1111, Forge) print a
    traceback for any exception an event raises, so there the error is a ``gr.Warning`` toast and the
    event returns "no change" for each of its ``outputs`` (without ``outputs`` it still raises)."""
    if func is None:
        return functools.partial(user_errors, outputs=outputs)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except IcgError as err:
            message = " ".join(str(err).split())
            logger.warning("Image Caption: %s", message)
            warned = _warn_quietly(message, outputs)
            if warned is not None:
                return warned
            raise _gradio_error(message) from None

    return wrapper


def listen(event: Callable[..., Any], func: Callable[..., Any], inputs: list[Any], outputs: list[Any],
           **kwargs: Any) -> Any:
    """``event(func, inputs, outputs)`` (a gradio listener such as ``button.click``) with ``func``'s user
    errors shown as messages (``user_errors``)."""
    return event(user_errors(func, outputs=len(outputs)), inputs=inputs, outputs=outputs, **kwargs)


def _gradio_major() -> int:
    import gradio as gr

    return int(str(gr.__version__).split(".")[0])


def _warn_quietly(message: str, outputs: int) -> Any:
    """On gradio < 5: the message as a ``gr.Warning`` and a no-change update per output; else None."""
    if outputs <= 0:
        return None
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - handlers called without gradio installed
        return None
    if _gradio_major() >= 5:
        return None
    gr.Warning(message)
    updates = tuple(gr.update() for _ in range(outputs))
    return updates[0] if outputs == 1 else updates


def _gradio_error(message: str) -> Exception:
    """A ``gr.Error`` showing ``message`` as it is (gradio's own ``str()`` is its ``repr``: quotes and
    literal ``\\n`` in the toast); where this gradio can (5+), it prints no traceback of its own."""
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - handlers called without gradio installed
        return RuntimeError(message)
    import inspect

    class UserError(gr.Error):
        def __str__(self) -> str:
            return self.message

    if "print_exception" in inspect.signature(gr.Error.__init__).parameters:
        return UserError(message, print_exception=False)
    return UserError(message)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A Dataframe value that keeps its headers when empty (gradio 3.41 drops them for ``[]``)."""
    return {"headers": list(headers), "data": [list(row) for row in rows]}


# ------------------------------------------------------------------------------------------ inputs
class Inputs:
    """What some of a panel's controls send, by name (``NAMES``, in the order of the controls).

    Built with keywords (``DecodingInputs(strategy="beam", num_beams="3")``) or from the flat values
    gradio passes (``from_values``); a name left out takes ``INITIAL``'s value (else None)."""

    NAMES: tuple[str, ...] = ()
    INITIAL: Mapping[str, Any] = {}

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.NAMES))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(unknown)}")
        self.values = {name: values.get(name, self.INITIAL.get(name)) for name in self.NAMES}

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.values!r})"

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Inputs:
        return cls(**dict(zip(cls.NAMES, values)))

    def flat(self) -> list[Any]:
        return [self.values[name] for name in self.NAMES]


def given(value: Any) -> Any:
    """A control's value, or None where it was left empty or at "model default"."""
    if isinstance(value, str):
        value = value.strip()
        return None if not value or value == MODEL_DEFAULT else value
    return value


def checked(option: Option, value: Any, where: str) -> Any:
    return option.check(given(value), where)


class DecodingInputs(Inputs):
    """The decoding controls (``icg.options.DECODING``) and the caption style (``CAPTION``); an empty box
    or "model default" keeps the model's own value. The seed starts at -1: a new one for each caption."""

    NAMES = (*DECODING.names, *CAPTION.names)
    INITIAL = {"seed": RANDOM_SEED}

    def overrides(self, rng: random.Random | None = None, draw_seed: bool = True) -> dict[str, Any]:
        """DecodingConfig overrides. Seed -1 draws a fresh seed (reported with the result, so a good
        caption can be reproduced), or with ``draw_seed=False`` leaves the seed to the model (a folder
        run: SBG then draws one per batch and the manifest records it)."""
        out = {}
        for option in DECODING:
            value = checked(option, self.values[option.name], "decoding")
            if value is not None:
                out[option.name] = value
        seed = out.pop("seed", None)
        if seed is not None and (seed >= 0 or draw_seed):
            out["seed"] = resolve_seed(seed, None if rng is None else lambda: rng.randint(0, MAX_SEED))
        return out

    def caption_options(self) -> CaptionOptions:
        return CaptionOptions(**{o.name: checked(o, self.values[o.name], "caption") for o in CAPTION})


class PromptInputs(Inputs):
    """The prompt template controls (``icg.options.TEMPLATE``) of the Caption tab."""

    NAMES = TEMPLATE.names
    INITIAL = {**TEMPLATE.defaults(), "template": DEFAULT_TEMPLATE}

    def template(self) -> PromptTemplate:
        values = {o.name: checked(o, self.values[o.name], "prompt") for o in TEMPLATE}
        values = {name: value for name, value in values.items() if value is not None}
        values.setdefault("template", "{caption}")
        return PromptTemplate(**values)

    def compose(self, caption: str, keywords: str) -> str:
        return self.template().compose(caption or "", split_parts(keywords or ""))


# ------------------------------------------------------------------------------------------ caption
class CaptionOutputs:
    """What a caption shows, in the order of ``CaptionPanel.outputs``."""

    def __init__(self, caption: str, info: str, candidates: dict[str, Any], keywords: str, prompt: str):
        self.caption, self.info, self.candidates, self.keywords, self.prompt = (
            caption, info, candidates, keywords, prompt,
        )

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in CAPTION_OUTPUTS)


CAPTION_OUTPUTS = ("caption", "info", "candidates", "keywords", "prompt")


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
        result = self.service.caption(image, _model(model), decoding.overrides(), decoding.caption_options())
        return self.outputs(result, prompt)

    def regenerate(
        self, keywords: str, image: Any, model: str, decoding: DecodingInputs, prompt: PromptInputs
    ) -> CaptionOutputs:
        words = split_parts((keywords or "").replace("###", ""))
        result = self.service.caption_keywords(
            words, _model(model), decoding.overrides(), decoding.caption_options(), image=image
        )
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
    @user_errors(outputs=len(CAPTION_OUTPUTS))
    def caption_event(self, image, model, *values):
        decoding, prompt = _split_values(values)
        return self.caption(image, model, decoding, prompt).as_tuple()

    @user_errors(outputs=len(CAPTION_OUTPUTS))
    def regenerate_event(self, keywords, image, model, *values):
        decoding, prompt = _split_values(values)
        return self.regenerate(keywords, image, model, decoding, prompt).as_tuple()

    @staticmethod
    def compose_event(caption, keywords, *template_values):
        """The prompt for the current caption and keywords; a template error is shown in the box."""
        return _compose(PromptInputs.from_values(template_values), caption, keywords)


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


def _split_values(values: Sequence[Any]) -> tuple[DecodingInputs, PromptInputs]:
    n = len(DecodingInputs.NAMES)
    return DecodingInputs.from_values(values[:n]), PromptInputs.from_values(values[n:])


# ------------------------------------------------------------------------------------------ batch
RESULT_HEADERS = ["image", "action", "caption", "written / error"]
PREVIEW_HEADERS = ["image", "would do", "caption", "would write"]
JOB_HEADERS = ["job", "status", "progress", "working on"]
#: The results table shows the latest rows only (a folder may hold thousands of images).
MAX_RESULT_ROWS = joblib.KEEP_RESULTS
#: The Batch panel's own fields (not options of the schema), then its BATCH and TEMPLATE options.
FOLDER_FIELDS = ("folder", "model", "extensions", "output_dir", "separator", "manifest", "dry_run")


class BatchInputs(Inputs):
    """The Batch panel's fields as the panel passes them: the folder fields, then ``icg.options.BATCH``
    and ``TEMPLATE`` by name (the template starts at the batch template)."""

    NAMES = (*FOLDER_FIELDS, *BATCH.names, *TEMPLATE.names)
    INITIAL = {
        **dict.fromkeys(FOLDER_FIELDS, ""),
        "dry_run": False,
        **BATCH.defaults(),
        **TEMPLATE.defaults(),
        "template": BATCH_TEMPLATE,
    }


N_BATCH_INPUTS = len(BatchInputs.NAMES)


class BatchController:
    """Start, watch and stop folder runs for the Batch panel; one run at a time per controller.

    Runs are jobs of ``registry`` (default: the process's, shared with the API and auto-captioning), so
    a run waits for the jobs before it and the panel says which one it is queued behind.
    ``defaults.allow_folders`` False fixes the folder, output folder and manifest to the defaults' values
    (whatever the page sends), as the WebUI's ``--hide-ui-dir-config`` requires. ``interval``: how often
    (seconds) the page is refreshed while nothing changes (the elapsed time).
    """

    def __init__(
        self,
        service: Any,
        defaults: Any = None,
        *,
        registry: joblib.JobRegistry | None = None,
        interval: float = 1.0,
    ) -> None:
        self.service = service
        self.defaults = defaults
        self.registry = registry if registry is not None else joblib.registry()
        self.interval = interval
        self.job: joblib.Job | None = None

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
        batch = {o.name: checked(o, inputs.values[o.name], "batch") for o in BATCH}
        template = PromptInputs(**{name: inputs.values[name] for name in TEMPLATE.names}).template()
        return BatchOptions(
            root=root,
            model=_model(inputs.model),
            extensions=tuple(extensions) or None,
            output_dir=_optional_path(output_dir),
            separator=_separator(inputs.separator),
            manifest=_optional_path(manifest),
            template=template,
            decoding=decoding.overrides(draw_seed=False),
            caption=decoding.caption_options(),
            dry_run=bool(inputs.dry_run),
            **{name: value for name, value in batch.items() if value is not None},
        )

    # ------------------------------------------------------------------------------ running
    def start(self, options: Any) -> joblib.Job:
        """Submit ``options`` as a job; refuses while this panel's previous run is queued or running."""
        job = self.job
        if job is not None and not job.finished:
            raise ConfigError(f"a batch is already running on {job.label}; stop it or wait for it to end")
        self.job = self.registry.submit(
            joblib.batch_work(self.service, options), kind="batch", label=str(options.root)
        )
        return self.job

    def stop(self) -> str:
        """Ask this panel's run to stop after its current images (everything written so far is kept)."""
        job = self.job
        if job is None or job.finished:
            return "No batch is running."
        self.registry.stop(job.id)
        return "Stopping after the current images..."

    # ------------------------------------------------------------------------------ display
    @staticmethod
    def render(snapshot: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The progress text and the results table of a job's snapshot (taken with ``results=True``)."""
        results = _results_table(snapshot.get("results") or [])
        if snapshot["status"] not in joblib.FINISHED:
            return _progress_text(snapshot), results
        if snapshot["error"] is not None:
            return f"Error: {snapshot['error']}", results
        summary = snapshot["summary"] or {}
        if "root" not in summary:
            return "Stopped before it started.", results
        if summary.get("dry_run"):
            return _dry_run_text(summary), _preview_table(summary)
        return _summary_text(summary), results

    def jobs_table(self) -> dict[str, Any]:
        """Every job the registry knows (this panel's, the API's, auto-captioning), newest first."""
        rows = []
        for snap in reversed(self.registry.snapshots()):
            done = f"{snap['done']} / {'?' if snap['total'] is None else snap['total']}"
            rows.append([joblib.describe(snap), snap["status"], done, snap["label"] or snap["current"] or ""])
        return table(JOB_HEADERS, rows)

    # Flat signatures for gradio.
    def run_event(self, *values: Any) -> Iterator[tuple[Any, ...]]:
        """Generator handler of the Start button: streams (progress, results, start button, jobs)."""
        import gradio as gr

        inputs = BatchInputs.from_values(values[:N_BATCH_INPUTS])
        decoding = DecodingInputs.from_values(values[N_BATCH_INPUTS:])
        try:
            job = self.start(self.options(inputs, decoding))
        except IcgError as err:
            yield f"Error: {err}", table(RESULT_HEADERS, []), gr.update(interactive=True), self.jobs_table()
            return
        for snapshot in stream_job(job, self.interval):
            progress, results = self.render(snapshot)
            running = snapshot["status"] not in joblib.FINISHED
            yield progress, results, gr.update(interactive=not running), self.jobs_table()

    def stop_event(self) -> str:
        return self.stop()


def stream_job(job: joblib.Job, interval: float | None = None) -> Iterator[dict[str, Any]]:
    """The job's snapshot (with its latest results) now, then after each change (or every ``interval``
    seconds without one), until it has finished."""
    while True:
        snapshot = job.snapshot(results=True)
        yield snapshot
        if snapshot["status"] in joblib.FINISHED:
            return
        job.wait_change(snapshot["version"], interval)


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


def _progress_text(snapshot: Mapping[str, Any]) -> str:
    stopping = " (stopping after the current images)" if snapshot["stop_requested"] else ""
    if snapshot["status"] == joblib.QUEUED:
        behind = snapshot["queued_behind"]
        if behind is None:
            return f"Queued...{stopping}"
        more = f" ({snapshot['ahead']} jobs ahead)" if snapshot["ahead"] > 1 else ""
        return f"Queued behind {joblib.describe(behind)}{more}{stopping}"
    info = snapshot["details"]
    if not info:
        return f"Loading the model and reading {snapshot['label']}...{stopping}"
    parts = [f"{snapshot['done']} / {snapshot['total']} images"]
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


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n)


def _failures_text(summary: Mapping[str, Any], limit: int = 20) -> str:
    failures = list(summary.get("failures") or ())
    if not failures:
        return ""
    lines = [f"\nFailed ({len(failures)}):"] + [f"  {f['key']}: {f['reason']}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return "\n".join(lines)


def _summary_text(summary: Mapping[str, Any]) -> str:
    head = "Stopped" if summary["stopped"] else "Done"
    seconds = summary["seconds"].get("total", 0.0)
    text = (
        f"{head}: {summary['processed']} of {summary['planned']} images to caption in {seconds:.1f} s "
        f"({summary['images_per_second']:.2f} images/s); {summary['total']} found in {summary['root']}."
    )
    counts = _counts_text(summary["counts"])
    if counts:
        text += f"\n{counts}."
    if summary.get("manifest"):
        text += f"\nManifest: {summary['manifest']}"
    return text + _failures_text(summary)


def _dry_run_text(summary: Mapping[str, Any]) -> str:
    plan = _counts_text(summary["plan_counts"]) or "nothing"
    text = (
        f"Dry run (nothing written): {summary['total']} images found in {summary['root']}; "
        f"{summary['planned']} to caption.\nPlan: {plan}."
    )
    if summary.get("preview"):
        text += f"\nPreview of the first {len(summary['preview'])} captions below."
    return text + _failures_text(summary)


def _results_table(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows = [
        [r["key"], r["action"], r.get("caption", ""), r.get("error") or r.get("sidecar") or "manifest"]
        for r in results
    ]
    return table(RESULT_HEADERS, rows)


def _preview_table(summary: Mapping[str, Any]) -> dict[str, Any]:
    rows = [[p["key"], p["action"], p["caption"], p["text"]] for p in summary["preview"]]
    return table(PREVIEW_HEADERS, rows)


__all__ = [
    "CANDIDATE_HEADERS",
    "JOB_HEADERS",
    "RESULT_HEADERS",
    "BatchController",
    "BatchInputs",
    "MODEL_DEFAULT",
    "CaptionController",
    "CaptionOutputs",
    "DecodingInputs",
    "PromptInputs",
    "describe",
    "stream_job",
    "table",
    "listen",
    "user_errors",
]
