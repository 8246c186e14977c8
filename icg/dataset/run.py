"""``run_dataset(options)``: caption a dataset with Ray Data and write committed shards.

The Ray pipeline, for the rows of ``icg.dataset.sources`` not already in ``--out``:

0. ``clip_preprocessing`` in one CPU task on a node of the cluster (where the models are, which need not
   be the driver's machine): which CLIP the model uses, and that CLIP's preprocessing as plain data
   (``icg.clip_encoder.preprocess_config``, read from its config, no weights loaded);
1. ``decode_images`` in CPU tasks: read (from ``path`` or the row's bytes), EXIF-rotate and convert with
   ``icg.imaging.load_image`` (the loader ``icg batch`` uses), then CLIP's preprocessing
   (``icg.clip_encoder.image_transform``, the transform ``ClipEncoder`` uses) into a ``pixels`` tensor
   column; an unreadable image becomes a row with its ``error`` and zero pixels;
2. ``CaptionActor`` in a pool of actors (``ActorPoolStrategy(min, max)``), one GPU each
   (``num_gpus=1``) when the cluster has GPUs, CPU actors otherwise. Each actor loads its models once,
   through a ``ModelManager`` on its own node (``--models-dir``, ``--download``, ``--clip`` as
   everywhere in ICG), and captions each batch of pixels through ``icg.pipeline.caption_batch``, the one
   captioning path. Actors are restarted and their batches retried when they die;
3. the driver streams the results, writes sidecars when asked (``icg.sinks.write_sidecar``: the policies
   and atomic writes of ``icg batch``) and commits shards (``icg.dataset.shards``).

Ray's own console output (worker logs, the raylet's messages such as out-of-memory kills) goes to
stderr while the run lasts, so stdout holds only what ICG prints (the summary, or ``--json``).

Every key is written once: resume drops the keys of committed shards before decoding, and the driver
drops a key it has already written in this run (counted as ``duplicates``).

Test hook: when the environment variable ``ICG_DATASET_HOLD`` names a folder, each actor, before its
batch number ``N`` (0-based; ``N`` read from ``hold-after`` in that folder, default 0), writes
``held-<pid>`` there and waits until a file ``go`` exists. The tests use it to kill an actor or the
driver at a known point of a run, never by timing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icg.errors import ConfigError, IcgError
from icg.imaging import DEFAULT_MAX_PIXELS
from icg.options import BATCH, BATCH_TEMPLATE, DEFAULT_MODEL, CaptionOptions
from icg.prompt import PromptTemplate

logger = logging.getLogger(__name__)

HOLD_ENV = "ICG_DATASET_HOLD"
#: CPUs a decoding task reserves: decoding is short and bursty, so several share a core, and a node
#: whose CPUs the model actors hold still has room for them.
DECODE_CPUS = 0.25


@dataclass(frozen=True)
class DatasetOptions:
    """What ``icg dataset`` does; validated on construction (``ConfigError``).

    ``runtime``: ``icg.models.manager.RuntimeConfig`` fields for the actors' model managers.
    ``actors``: the pool's (min, max) size. ``actor_cpus``: CPUs each model actor reserves.
    ``batch_size``: images per batch (None: 32 with GPUs, 8 on CPUs). ``rows_per_shard``: rows per
    committed output shard. ``address``: a Ray cluster to join (None: this machine's running one, or a
    new local one). ``sidecars``: also write caption files beside source images on a filesystem.
    """

    input: str
    out: str | os.PathLike
    model: str = DEFAULT_MODEL
    format: str = "parquet"
    runtime: Mapping[str, Any] = field(default_factory=dict)
    decoding: Mapping[str, Any] = field(default_factory=dict)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    template: PromptTemplate = field(default_factory=lambda: PromptTemplate(BATCH_TEMPLATE))
    actors: tuple[int, int] = (1, 1)
    actor_cpus: float = 1.0
    batch_size: int | None = None
    rows_per_shard: int = 10_000
    address: str | None = None
    num_cpus: int | None = None
    recursive: bool = True
    path_column: str = "path"
    bytes_column: str | None = None
    key_column: str = "key"
    sidecars: bool = False
    policy: str = BATCH["policy"].default
    sidecar_extension: str = BATCH["sidecar_extension"].default
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        from icg.dataset.shards import FORMATS

        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        low, high = self.actors
        if not (1 <= low <= high):
            raise ConfigError(f"--actors must be MIN or MIN:MAX with 1 <= MIN <= MAX, not {low}:{high}")
        if not self.actor_cpus > 0:
            raise ConfigError(f"--actor-cpus must be more than 0, not {self.actor_cpus}")
        if self.rows_per_shard < 1:
            raise ConfigError(f"--shard-rows must be at least 1, not {self.rows_per_shard}")
        for name in ("batch_size", "policy", "sidecar_extension"):
            BATCH[name].check(getattr(self, name), "dataset")
        if not str(self.out):
            raise ConfigError("no output folder given (--out)")


@dataclass
class DatasetSummary:
    """What a run did. ``nodes``/``workers``: the Ray nodes and actor processes that captioned."""

    input: str
    out: str
    model: str
    found: int | None = None
    skipped: int = 0
    captioned: int = 0
    failed: int = 0
    duplicates: int = 0
    sidecars: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    shards: list[str] = field(default_factory=list)
    stale_temps_removed: int = 0
    seconds: float = 0.0
    #: when the first batch of results reached the driver (seconds after the run's start; the actors
    #: loaded their models before it) and how many rows it held: the steady state is what came after
    first_batch_seconds: float | None = None
    first_batch_rows: int = 0

    @property
    def processed(self) -> int:
        return self.captioned + self.failed

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float | None:
        """Images/s from the first batch of results to the last (model loading and the pipeline's
        start excluded); None when everything came in one batch."""
        rest = self.processed - self.first_batch_rows
        if self.first_batch_seconds is None or rest <= 0 or self.seconds <= self.first_batch_seconds:
            return None
        return rest / (self.seconds - self.first_batch_seconds)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "out": self.out,
            "model": self.model,
            "found": self.found,
            "skipped": self.skipped,
            "captioned": self.captioned,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "sidecars": dict(self.sidecars),
            "failures": [{"key": k, "error": e} for k, e in self.failures],
            "nodes": sorted(self.nodes),
            "workers": sorted(self.workers),
            "shards": list(self.shards),
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "steady_images_per_second": self.steady_images_per_second,
            "exit_code": self.exit_code,
        }


def format_summary(summary: DatasetSummary, max_failures: int = 20) -> str:
    lines = [
        f"done: {summary.captioned} of {summary.processed} images captioned, {summary.failed} failed, "
        f"{summary.skipped} already done; {summary.images_per_second:.2f} images/s on "
        f"{len(summary.nodes)} node(s), {len(summary.workers)} actor process(es); "
        f"{len(summary.shards)} shard(s) written to {summary.out}"
    ]
    if summary.sidecars:
        lines.append("caption files: " + ", ".join(f"{n} {k}" for k, n in sorted(summary.sidecars.items())))
    if summary.duplicates:
        lines.append(f"{summary.duplicates} repeated key(s) in the input were captioned once")
    for key, error in summary.failures[:max_failures]:
        lines.append(f"failed: {key}: {error}")
    if len(summary.failures) > max_failures:
        lines.append(
            f"... and {len(summary.failures) - max_failures} more failures (see the shards' error column)"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CPU tasks


def clip_preprocessing(model: str, runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The ``preprocess_config`` of ``model``'s CLIP, resolved as the actors will (the captioner is
    loaded on the CPU to learn which CLIP it uses; the CLIP itself is not)."""
    from icg.clip_encoder import preprocess_config
    from icg.models.manager import ModelManager, RuntimeConfig

    manager = ModelManager(RuntimeConfig(**{**runtime, "device": "cpu", "dtype": "auto"}))
    with manager.session():
        spec = manager.captioner(model).clip_spec
    manager.unload()
    return preprocess_config(spec)


@functools.lru_cache(maxsize=4)
def _transform(config_json: str):
    """The image transform of a ``preprocess_config`` (as JSON), built once per worker process."""
    from icg.clip_encoder import image_transform

    return image_transform(json.loads(config_json))


def pixel_shape(preprocessing: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(3, H, W)``: the shape of one image's pixels after the CLIP transform (a centre crop or a
    squash or a padded resize to ``size``, whatever the resize mode)."""
    size = preprocessing["size"]
    height, width = (size, size) if isinstance(size, int) else size
    return 3, int(height), int(width)


def decode_images(table, max_pixels: int | None, preprocessing: Mapping[str, Any]):
    """Rows of ``key``/``path``/``data`` (and maybe ``error``) -> ``key``/``path``/``error``/``pixels``:
    each image decoded upright RGB by ``icg.imaging.load_image`` and preprocessed by the CLIP's
    transform into a float32 ``(3, H, W)`` tensor, or its error (and zeros)."""
    import numpy as np
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    from icg.imaging import load_image

    transform = _transform(json.dumps(preprocessing, sort_keys=True))

    columns = table.column_names
    keys = table.column("key").to_pylist()
    paths = table.column("path").to_pylist()
    datas = table.column("data").to_pylist()
    errors = table.column("error").to_pylist() if "error" in columns else [None] * len(keys)
    pixels = np.zeros((len(keys), *pixel_shape(preprocessing)), dtype=np.float32)
    error = []
    for i, (path, data, err) in enumerate(zip(paths, datas, errors)):
        if err is None:
            try:
                image = load_image(data if data is not None else path, max_pixels=max_pixels)
                pixels[i] = transform(image).numpy()
            except IcgError as exc:
                err = _strip_source(str(exc), path)
            except Exception as exc:  # noqa: BLE001 - whatever one file does, the job goes on
                err = f"cannot read image ({type(exc).__name__}: {exc})"
        error.append(err)
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "path": pa.array(paths, pa.string()),
            "error": pa.array(error, pa.string()),
            "pixels": ArrowTensorArray.from_numpy(pixels),
        }
    )


def _strip_source(message: str, path: str | None) -> str:
    """``"<path>: reason"`` or ``"<bytes>: reason"`` (how ``ImageError`` names its source) -> reason."""
    for prefix in (f"{path}: ", "<bytes>: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# ------------------------------------------------------------------------------------------ actors


class CaptionActor:
    """A model actor: loads the models once, then captions batches of preprocessed pixels."""

    def __init__(self, model: str, runtime: Mapping[str, Any], decoding, caption, template) -> None:
        import ray

        from icg.models.manager import ModelManager, RuntimeConfig
        from icg.pipeline import resolve_decoding

        self.model = model
        self.manager = ModelManager(RuntimeConfig(**runtime))
        with self.manager.session():
            captioner = self.manager.captioner(model)
            self.manager.clip(captioner.clip_spec)  # loaded now, not on the first batch
            self.decoding = resolve_decoding(captioner, decoding)
        self.caption = caption
        self.template = template
        self.node = ray.get_runtime_context().get_node_id()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.batches = 0
        logger.info("caption actor %s ready on node %s (%s)", self.worker, self.node, self.manager.device)

    def __call__(self, batch):
        """``batch``: numpy columns ``key``, ``path``, ``error`` and ``pixels`` (``decode_images``)."""
        import pyarrow as pa
        import torch

        from icg.dataset.shards import schema
        from icg.pipeline import caption_batch

        _hold_for_tests(self.batches)
        self.batches += 1
        rows = [
            {"key": k, "path": p, "error": e}
            for k, p, e in zip(batch["key"].tolist(), batch["path"].tolist(), batch["error"].tolist())
        ]
        good = [i for i, r in enumerate(rows) if r["error"] is None]
        results: dict[str, Any] = {}
        if good:
            pixels = torch.from_numpy(batch["pixels"][good])
            try:
                captioned = caption_batch(
                    self.manager, self.model, pixels, decoding=self.decoding, options=self.caption
                )
                results = {rows[i]["key"]: res for i, res in zip(good, captioned)}
            except IcgError as exc:
                for i in good:
                    rows[i]["error"] = str(exc)
        out = [self._row(r, results.get(r["key"])) for r in rows]
        return pa.Table.from_pylist(out, schema=schema())

    def _row(self, row: dict[str, Any], result) -> dict[str, Any]:
        base = {
            "key": row["key"],
            "path": row["path"],
            "model": self.model,
            "node": self.node,
            "worker": self.worker,
            "error": row["error"],
        }
        if result is None:
            return {**base, "keywords": [], "candidates": [], "scores": []}
        keywords = [getattr(k, "text", str(k)) for k in result.keywords]
        return {
            **base,
            "caption": result.caption,
            "prompt": self.template.compose(result.caption, keywords),
            "keywords": keywords,
            "candidates": [c.text for c in result.candidates],
            "scores": [c.score for c in result.candidates if c.score is not None]
            if all(c.score is not None for c in result.candidates)
            else [],
            "model": result.model,
            "decoding": json.dumps(result.decoding, sort_keys=True, default=str),
            "seed": result.seed,
        }


def _hold_for_tests(batch_number: int) -> None:
    """The test hook of the module docstring (does nothing unless ``ICG_DATASET_HOLD`` is set)."""
    folder = os.environ.get(HOLD_ENV)
    if not folder:
        return
    folder_path = Path(folder)
    after = folder_path / "hold-after"
    hold_after = int(after.read_text().strip()) if after.is_file() else 0
    go = folder_path / "go"
    if batch_number < hold_after or go.exists():
        return
    (folder_path / f"held-{os.getpid()}").write_text(str(batch_number))
    while not go.exists():
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ driver


def connect(options: DatasetOptions):
    """``ray``, initialised for this run: the running instance if there is one, else ``options.address``
    or a new local instance. Returns ``(ray, started)``; ``started``: this call initialised it."""
    from icg.dataset import require_ray

    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,  # to stderr: see run_dataset
    }
    if HOLD_ENV in os.environ:
        kwargs["runtime_env"] = {"env_vars": {HOLD_ENV: os.environ[HOLD_ENV]}}
    # No --address: a new local instance ("local"), not whatever cluster Ray would find on this
    # machine, unless the job runs under Ray's job submission (RAY_ADDRESS is set).
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        kwargs["num_cpus"] = options.num_cpus
    ray.init(address=address, **kwargs)
    return ray, True


def run_dataset(options: DatasetOptions, *, notify: Callable[[str], None] | None = None) -> DatasetSummary:
    """Caption ``options.input`` into shards in ``options.out``; see the module docstring.

    Errors in the options, the input or the models raise ``IcgError``; a bad image never does.
    """
    from icg.dataset.shards import ShardWriter, done_keys, remove_stale_temps
    from icg.dataset.sources import resolve

    notify = notify or (lambda message: None)
    source = resolve(
        options.input,
        path_column=options.path_column,
        bytes_column=options.bytes_column,
        key_column=options.key_column,
        recursive=options.recursive,
    )
    writer = ShardWriter(options.out, options.format, options.rows_per_shard)
    summary = DatasetSummary(options.input, os.fspath(options.out), options.model)
    summary.stale_temps_removed = remove_stale_temps(options.out)
    done = done_keys(options.out)
    # Ray prints its workers' stdout and the raylet's messages to sys.stdout: stderr instead, so that
    # stdout holds only ICG's own output (the summary or --json). Ray stops printing at shutdown.
    with contextlib.redirect_stdout(sys.stderr):
        return _run(options, source, writer, summary, done, notify)


def _run(
    options: DatasetOptions, source, writer, summary: DatasetSummary, done: set[str], notify
) -> DatasetSummary:
    from icg.batch.engine import auto_batch_size

    ray, started = connect(options)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = options.progress
        gpus = ray.cluster_resources().get("GPU", 0) > 0 and options.runtime.get("device") != "cpu"
        batch_size = options.batch_size or auto_batch_size("cuda" if gpus else "cpu")
        try:
            ds, todo = source.dataset(ray, done, batch_size)
        except FileNotFoundError as err:  # Ray lists a remote input here: a missing bucket or folder
            raise ConfigError(f"input {options.input}: no such file or folder ({err})") from err
        except (OSError, ValueError) as err:  # pyarrow's errors: credentials, permissions, endpoint
            raise ConfigError(f"input {options.input}: cannot be read ({_last_line(err)})") from err
        if source.kind == "files":
            summary.found = len(source.items)
            summary.skipped = len(source.items) - todo
        else:
            summary.skipped = len(done)
        if done:
            notify(f"icg: {len(done)} image(s) already in {options.out}; skipping them")
        preprocessing = _remote(ray, clip_preprocessing, options.model, dict(options.runtime))
        ds = ds.map_batches(
            decode_images,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=DECODE_CPUS,
            fn_kwargs={"max_pixels": options.max_pixels, "preprocessing": preprocessing},
        )
        low, high = options.actors
        ds = ds.map_batches(
            CaptionActor,
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": options.model,
                "runtime": dict(options.runtime),
                "decoding": dict(options.decoding),
                "caption": options.caption,
                "template": options.template,
            },
            num_cpus=options.actor_cpus,
            num_gpus=1 if gpus else 0,
        )
        start = time.perf_counter()
        written: set[str] = set()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if summary.first_batch_seconds is None:
                    summary.first_batch_seconds = time.perf_counter() - start
                    summary.first_batch_rows = batch.num_rows
                rows = [r for r in batch.to_pylist() if _first(r, written, summary)]
                for row in rows:
                    _account(row, options, summary)
                writer.add(rows)
        except IcgError:
            raise
        except Exception as err:  # Ray's own errors carry a traceback: keep its last line
            raise IcgError(f"the Ray job failed: {_last_line(err)}") from err
        finally:
            writer.commit()  # what arrived is kept, so a rerun goes on from there
            summary.shards = [os.fspath(p) for p in writer.written]
        summary.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    return summary


def _remote(ray, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in one CPU task on the cluster; an ``IcgError`` it raises (a missing model,
    say) is raised here as it is, without Ray's traceback."""
    task = ray.remote(num_cpus=DECODE_CPUS, max_retries=1)(function)
    try:
        return ray.get(task.remote(*args))
    except Exception as err:  # noqa: BLE001 - Ray wraps the task's own error
        cause = getattr(err, "cause", None)
        if isinstance(cause, IcgError):
            raise cause from None
        raise IcgError(f"the Ray job failed: {_last_line(err)}") from err


def _first(row: dict[str, Any], written: set[str], summary: DatasetSummary) -> bool:
    if row["key"] in written:
        summary.duplicates += 1
        return False
    written.add(row["key"])
    return True


def _account(row: dict[str, Any], options: DatasetOptions, summary: DatasetSummary) -> None:
    """Count the row, note its node and worker, and write its sidecar when asked."""
    summary.nodes.add(row["node"])
    summary.workers.add(row["worker"])
    if row["error"] is None and options.sidecars:
        _sidecar(row, options, summary)
    if row["error"] is not None:
        summary.failed += 1
        summary.failures.append((row["key"], row["error"]))
    else:
        summary.captioned += 1


def _sidecar(row: dict[str, Any], options: DatasetOptions, summary: DatasetSummary) -> None:
    from icg.sinks import sidecar_path, write_sidecar

    path = row["path"]
    if not path or "://" in path or not os.path.isfile(path):
        summary.sidecars["not on a filesystem"] = summary.sidecars.get("not on a filesystem", 0) + 1
        return
    try:
        action = write_sidecar(
            sidecar_path(path, extension=options.sidecar_extension), row["prompt"], options.policy
        )
    except IcgError as exc:
        row["error"] = str(exc)
        return
    summary.sidecars[action] = summary.sidecars.get(action, 0) + 1


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
