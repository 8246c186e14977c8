"""The HTTP API: ``/icg/v1/...`` routes on any FastAPI app, with pydantic request and response models.

``mount_api(app, service)`` adds the routes. ``service`` is an ``icg.ui.service.CaptionService`` (or any
object with its methods); the WebUI adapter passes one that runs every job with the WebUI's device
etiquette, plus the WebUI's auth (``--api-auth``), its ``queue_lock`` and ``--hide-ui-dir-config``.
Nothing here imports the WebUI, so the tests mount the routes on a bare FastAPI app.

Routes (all JSON):

* ``GET  /icg/v1/models``              the captioning models: installed or not, size, loaded, default
* ``POST /icg/v1/caption``             base64 image or keywords -> caption, candidates, keywords, prompt
* ``POST /icg/v1/batch``               caption a server-side folder in the background -> job id (202)
* ``GET  /icg/v1/batch``               the known jobs
* ``GET  /icg/v1/batch/{id}``          a job's progress, and its summary once finished
* ``POST /icg/v1/batch/{id}/stop``     stop a job after the batch it is working on
* ``POST /icg/v1/unload``              free the models' memory

The precision (``icg.options.RUNTIME["dtype"]``: fp16, int8, ...) is the server's setting, not a request
field: models are loaded once per process, so a per-request precision would reload them for every
request. ``GET /models`` reports it (``loaded.dtype``); a request naming ``dtype`` is refused (422).

Bad input is a JSON 4xx with a message, never a 500: malformed JSON or values out of range (NaN and
Infinity too) 422, naming the field and quoting at most a short value back (``validation_details``); bad
base64 or not an image 400; a request body over ``max_request_bytes`` or an image over ``max_pixels``
(read from its header, before decoding) 413; unknown model or job 404; folders under
``--hide-ui-dir-config`` 403; a model that is not installed while downloads are off 409. At most
``decode_slots`` requests hold a decoded image at once.

The pydantic models use only what pydantic 1.10 (the WebUI's pin) and 2.x share: ``Field`` bounds,
``Literal``, optional fields; the one difference (forbidding unknown fields) is bridged by ``_Model``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from icg.errors import (
    CheckpointError,
    ConfigError,
    DownloadError,
    IcgError,
    ImageError,
    ModelNotFound,
    VocabularyError,
)
from icg.jobs import JobNotFound, JobRegistry, batch_work
from icg.jobs import registry as process_registry
from icg.options import (
    BATCH,
    CAPTION,
    DECODING,
    MAX_KEYWORDS,
    TEMPLATE,
    UPLOAD_MAX_MEGAPIXELS,
    CaptionOptions,
    Option,
    OptionGroup,
)
from icg.ui.service import offered_model

logger = logging.getLogger(__name__)

API_PREFIX = "/icg/v1"
MAX_IMAGE_CHARS = 100_000_000  # base64 characters (~75 MB of image file)
#: The largest request body read (bytes): the largest image plus room for the other fields; more is a 413.
MAX_REQUEST_BYTES = MAX_IMAGE_CHARS + 1_000_000
#: The most pixels an uploaded image may have by default (``icg.options.UPLOAD_MAX_MEGAPIXELS``): checked
#: from the image's header before its pixels are decoded; more is a 413.
UPLOAD_MAX_PIXELS = UPLOAD_MAX_MEGAPIXELS.default * 1_000_000
#: How many requests may hold a decoded image at once (decoding through captioning); others wait.
DECODE_SLOTS = 2
#: The longest text of a request's value that a 422 quotes back (the rest is cut).
_ECHO_CHARS = 80

_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2


class _Model(BaseModel):
    """Requests refuse unknown fields, so a typo ("temprature") is an error, not silently ignored."""

    if _PYDANTIC_V2:
        model_config = pydantic.ConfigDict(extra="forbid")
    else:

        class Config:
            extra = "forbid"


def _dump(model: BaseModel) -> dict[str, Any]:
    """The fields that were given a value (not None), on pydantic 1 and 2."""
    if _PYDANTIC_V2:
        return model.model_dump(exclude_none=True)
    return model.dict(exclude_none=True)


# ------------------------------------------------------------------------------------------ requests
def _field(option: Option) -> tuple[Any, Any]:
    """A pydantic field for an ``icg.options`` option: optional (None keeps the default), with its bounds."""
    kind: Any = Literal[option.choices] if option.choices else option.type  # type: ignore[valid-type]
    bounds: dict[str, Any] = {}
    if option.minimum is not None:
        bounds["gt" if option.above else "ge"] = option.minimum
    if option.maximum is not None:
        bounds["le"] = option.maximum
    if option.max_length is not None:
        bounds["max_length"] = option.max_length
    if option.type is float:
        bounds["allow_inf_nan"] = False  # NaN and Infinity parse as JSON numbers in Python: refuse them
    return (Optional[kind], Field(None, description=option.help, **bounds))  # noqa: UP045 - pydantic 1


def schema_model(name: str, group: OptionGroup, doc: str, names: Sequence[str] | None = None) -> type:
    """A request model with one optional field per option of ``group`` (or the ``names`` among them)."""
    fields = {o.name: _field(o) for o in group if names is None or o.name in names}
    model = pydantic.create_model(name, __base__=_Model, **fields)
    model.__doc__ = doc
    return model


DecodingOptions = schema_model(
    "DecodingOptions", DECODING, "Decoding overrides; a field left out keeps the model's own default."
)
TemplateOptions = schema_model(
    "TemplateOptions", TEMPLATE, "How the prompt is composed; a field left out keeps the server's setting."
)
BatchFields = schema_model("BatchFields", BATCH, "Folder batch options; a field left out keeps the default.")
StyleType, _STYLE = _field(CAPTION["style"])
CandidatesType, _ = _field(DECODING["num_samples"])


def _candidates_field() -> Any:
    option = DECODING["num_samples"]
    description = "SBG candidates (= decoding.num_samples)"
    return Field(None, ge=option.minimum, le=option.maximum, description=description)


class CaptionRequest(_Model):
    """One image (base64, optionally a ``data:`` URL) or keywords (SBG models), or both (keywords kept,
    candidates re-ranked against the image)."""

    image: str | None = Field(None, max_length=MAX_IMAGE_CHARS)
    keywords: list[str] | str | None = None
    force: list[str] | None = Field(None, description="SBG: keywords to add to the selection")
    ban: list[str] | None = Field(None, description="SBG: keywords to remove from the selection")
    style: StyleType = _STYLE
    model: str | None = Field(None, max_length=500)
    num_candidates: CandidatesType = _candidates_field()
    decoding: DecodingOptions | None = None
    template: TemplateOptions | None = None


class BatchRequest(BatchFields):  # type: ignore[misc,valid-type]
    """Caption every image in a folder on the server into sidecar files and/or a manifest; the batch
    fields (``recursive``, ``policy``, ``sidecar_extension``, ``write_sidecars``, ``resume``,
    ``batch_size``, ``preview``) are ``icg.options.BATCH``'s."""

    folder: str = Field(..., min_length=1, max_length=4096)
    model: str | None = Field(None, max_length=500)
    output_dir: str | None = Field(
        None, max_length=4096, description="mirror the tree here instead of beside"
    )
    manifest: str | None = Field(None, max_length=4096, description="a .jsonl or .csv file to write as well")
    num_candidates: CandidatesType = _candidates_field()
    style: StyleType = _STYLE
    decoding: DecodingOptions | None = None
    template: TemplateOptions | None = None
    dry_run: bool = False


# ------------------------------------------------------------------------------------------ responses
class CandidateOut(BaseModel):
    text: str
    score: float | None = None


class KeywordOut(BaseModel):
    text: str
    score: float | None
    step: str


class CaptionResponse(BaseModel):
    caption: str
    prompt: str
    model: str
    candidates: list[CandidateOut]
    scores: list[float | None]
    score_kind: str | None = None
    keywords: list[KeywordOut]
    seed: int | None = None
    decoding: dict[str, Any]
    timings: dict[str, float | None]


class ModelOut(BaseModel):
    """One ``icg.models.inventory.ModelStatus`` (its ``to_dict``)."""

    id: str
    display_name: str
    kind: str
    description: str = ""
    installed: bool
    missing: list[str]
    requires: list[str] = []
    size_bytes: int
    expected_bytes: int | None = None
    manual_only: bool = False
    loaded: bool = False
    default: bool = False
    path: str = ""
    source: str = ""
    registered: bool = True
    note: str = ""


class ModelsResponse(BaseModel):
    default: str
    models_dir: str
    models: list[ModelOut]
    loaded: dict[str, Any]


class QueuedBehind(BaseModel):
    id: str
    kind: str


class JobOut(BaseModel):
    """``icg.jobs.Job.snapshot()``: a batch of this API, of the WebUI's Batch tab, or auto-captioning."""

    id: str
    kind: str
    label: str = ""
    status: str
    done: int
    total: int | None = None
    failed: int
    progress: float | None = None
    current: str | None = None
    message: str = ""
    details: dict[str, Any] = {}
    stop_requested: bool = False
    ahead: int = 0
    queued_behind: QueuedBehind | None = None
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    elapsed: float
    summary: dict[str, Any] | None = None
    error: str | None = None
    version: int = 0


class JobsResponse(BaseModel):
    jobs: list[JobOut]


class UnloadResponse(BaseModel):
    unloaded: bool
    loaded: dict[str, Any]


# ------------------------------------------------------------------------------------------ auth
def parse_credentials(text: str) -> dict[str, str]:
    """``"user:password,user2:password2"`` (the WebUI's ``--api-auth`` format) -> ``{user: password}``.

    A password may contain ":" (only the first one separates). An entry without ":" or with an empty
    user name is a ``ConfigError``: refusing beats running the API unprotected by mistake.
    """
    credentials: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise ConfigError("API credentials must look like user:password[,user2:password2]")
        credentials[user] = password
    if not credentials:
        raise ConfigError("no API credentials given (expected user:password)")
    return credentials


def basic_auth(credentials: Mapping[str, str]) -> Callable[..., str]:
    """A FastAPI dependency that accepts HTTP Basic auth with one of ``credentials`` (else 401)."""
    expected = {user.encode("utf-8"): password.encode("utf-8") for user, password in credentials.items()}
    security = HTTPBasic(auto_error=True)

    def check_credentials(creds: HTTPBasicCredentials = Depends(security)) -> str:  # noqa: B008
        user = creds.username.encode("utf-8")
        password = expected.get(user, secrets.token_bytes(16))  # compare anyway: no timing hint for users
        if user in expected and secrets.compare_digest(creds.password.encode("utf-8"), password):
            return creds.username
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return check_credentials


# ------------------------------------------------------------------------------------------ 413 and 422
def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` (one entry per bad field: ``loc``, ``msg``, ``type``) made safe to send.

    The values a request gave are quoted only when short: a string is cut to ``_ECHO_CHARS`` characters,
    a list or object is left out (pydantic 2 would echo a 100 MB image back), and NaN or Infinity, which
    JSON cannot carry (the error response itself would fail with a plain-text 500), become text.
    """
    details = []
    for error in errors:
        item: dict[str, Any] = {
            "loc": [part if isinstance(part, (int, str)) else str(part) for part in error.get("loc", ())],
            "msg": _short(str(error.get("msg", ""))),
            "type": str(error.get("type", "")),
        }
        if "input" in error and _echo(error["input"]) is not _LEFT_OUT:
            item["input"] = _echo(error["input"])
        ctx = {str(k): _echo(v) for k, v in dict(error.get("ctx") or {}).items()}
        ctx = {k: (str(v) if v is _LEFT_OUT else v) for k, v in ctx.items()}
        if ctx:
            item["ctx"] = {k: _short(v) if isinstance(v, str) else v for k, v in ctx.items()}
        details.append(item)
    return details


_LEFT_OUT = object()


def _echo(value: Any) -> Any:
    """``value`` as a 422 may quote it: JSON scalars as they are, long text cut, NaN/Infinity as text,
    containers and other objects ``_LEFT_OUT``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _short(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _short(value)
    return _LEFT_OUT


def _short(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else f"{text[:_ECHO_CHARS]}... ({len(text)} characters)"


async def _read_within(request: Request, limit: int) -> Request | None:
    """``request`` with its body read, if the body is at most ``limit`` bytes (else None, read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def route_class(max_request_bytes: int) -> type[APIRoute]:
    """The routes' class: a body over ``max_request_bytes`` is a 413 before it is parsed, and a request
    that fails validation is a JSON 422 with ``validation_details`` (on this router only: the host
    app's own error handlers are left alone)."""

    class IcgRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                within = await _read_within(request, max_request_bytes)
                if within is None:
                    detail = f"request too large: the limit is {max_request_bytes} bytes"
                    return JSONResponse(status_code=413, content={"detail": detail})
                try:
                    return await handler(within)
                except RequestValidationError as err:
                    return JSONResponse(status_code=422, content={"detail": validation_details(err.errors())})

            return limited

    return IcgRoute


# ------------------------------------------------------------------------------------------ helpers
def http_error(err: BaseException) -> HTTPException:
    """An ``HTTPException`` for an error a request caused, with its message as ``detail``."""
    if isinstance(err, HTTPException):
        return err
    if isinstance(err, (ModelNotFound, JobNotFound)):
        status = 404
    elif isinstance(err, ImageError):
        status = 400
    elif isinstance(err, (ConfigError, VocabularyError)):
        status = 422
    elif isinstance(err, DownloadError):
        status = 409  # the model must be installed first (downloads are off, or the download failed)
    elif isinstance(err, CheckpointError):
        status = 500  # a broken model file on the server: not the request's fault
    elif isinstance(err, IcgError):
        status = 400
    else:
        status = 500
    return HTTPException(status_code=status, detail=str(err) or type(err).__name__)


def decode_image(data: str, max_pixels: int | None = UPLOAD_MAX_PIXELS):
    """A base64 string (or ``data:image/...;base64,`` URL) -> an upright RGB PIL image; 400 when it isn't,
    413 when it has more than ``max_pixels`` pixels (read from its header: the pixels are not decoded)."""
    from icg.imaging import ImageTooLarge, load_image

    text = data.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise HTTPException(
                status_code=400, detail="image: a data URL must be base64 (data:...;base64,...)"
            )
    text = "".join(text.split())
    if not text:
        raise HTTPException(status_code=400, detail="image: empty")
    text += "=" * (-len(text) % 4)  # tolerate stripped padding
    if "-" in text or "_" in text:  # the URL-safe alphabet
        text = text.translate(_URLSAFE_TO_STANDARD)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:  # invalid characters, or nothing but padding
        raise HTTPException(status_code=400, detail="image: not valid base64")
    try:
        return load_image(raw, max_pixels=max_pixels)
    except ImageTooLarge as err:
        raise HTTPException(status_code=413, detail=f"image: {err}".replace("<bytes>: ", "")) from err
    except ImageError as err:
        raise HTTPException(status_code=400, detail=f"image: not a readable image ({err})") from err


def decoding_overrides(decoding: DecodingOptions | None, num_candidates: int | None) -> dict[str, Any]:
    overrides = _dump(decoding) if decoding is not None else {}
    if num_candidates is not None:
        overrides["num_samples"] = num_candidates
    if overrides.get("seed") == -1:
        overrides["seed"] = None
    return overrides


def prompt_template(service: Any, options: TemplateOptions | None):
    """The service's template (its settings) with the request's fields on top."""
    from icg.prompt import PromptTemplate

    base = service.prompt_template() if hasattr(service, "prompt_template") else PromptTemplate()
    changes = _dump(options) if options is not None else {}
    try:
        return base.__class__(**{**_fields(base), **changes})
    except TypeError as err:  # pragma: no cover - the fields are PromptTemplate's own
        raise ConfigError(f"invalid prompt template options: {err}") from err


def _fields(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def caption_payload(result: Any, prompt: str) -> dict[str, Any]:
    """The ``CaptionResponse`` of ``result``; a score or timing that is NaN or infinite (which JSON
    cannot carry: the response would fail with a 500) is sent as null."""
    candidates = [{"text": c.text, "score": _finite(c.score)} for c in result.candidates]
    return {
        "caption": result.caption,
        "prompt": prompt,
        "model": result.model,
        "candidates": candidates,
        "scores": [c["score"] for c in candidates],
        "score_kind": result.score_kind,
        "keywords": [{"text": k.text, "score": _finite(k.score), "step": k.step} for k in result.keywords],
        "seed": result.seed,
        "decoding": dict(result.decoding),
        "timings": {k: _finite(v) for k, v in result.timings.items()},
    }


def _finite(number: Any) -> float | None:
    return None if number is None or not math.isfinite(float(number)) else float(number)


def describe_models(service: Any) -> dict[str, Any]:
    """The models a user can choose, each as its ``icg.models.inventory`` record (which says what
    "installed" means): the ``GET /models`` payload and the WebUI's Models panel."""
    from icg.models.inventory import manager_inventory

    manager = service.manager
    choices = service.model_choices()
    default = service.default_model()
    rows = {row.id: row for row in manager_inventory(manager, extra=choices, default=default)}
    return {
        "default": default,
        "models_dir": str(manager.models_dir),
        "models": [rows[name].to_dict() for name in choices],
        "loaded": manager.loaded(),
    }


def check_model(service: Any, model: str | None) -> str:
    """``offered_model``, or a 404 that says where the list is."""
    try:
        return offered_model(service, model)
    except ModelNotFound as err:
        raise HTTPException(status_code=404, detail=f"{err} (GET {API_PREFIX}/models)") from None


# ------------------------------------------------------------------------------------------ routes
def mount_api(
    app: Any,
    service: Any,
    *,
    auth: Callable[..., Any] | None = None,
    queue_lock: Any = None,
    hide_dirs: bool = False,
    jobs: JobRegistry | None = None,
    prefix: str = API_PREFIX,
    max_pixels: int | Callable[[], int | None] | None = UPLOAD_MAX_PIXELS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    decode_slots: int = DECODE_SLOTS,
) -> APIRouter:
    """Add the ICG routes to the FastAPI ``app`` and return their router.

    ``auth``: a FastAPI dependency every route depends on (e.g. ``basic_auth(...)``); ``queue_lock``: a
    lock held around model work (the WebUI's, so captioning never runs beside image generation);
    ``hide_dirs``: refuse folder batches (``--hide-ui-dir-config``); ``jobs``: where batch jobs run
    (default: the process's ``icg.jobs.registry()``, which the Batch tab and auto-captioning share; kept
    as ``router.jobs``). ``GET /batch`` lists every job of it, the tab's too.

    Memory: an uploaded image with more than ``max_pixels`` pixels (None: only Pillow's own limit; a
    callable: asked on each request, inside the service's ``snapshot`` of its settings, as the WebUI's
    setting is) is a 413 before its pixels are decoded, so is a request body over ``max_request_bytes``;
    at most ``decode_slots`` requests hold a decoded image at once (from decoding to the caption; kept as
    ``router.decode_slots``), the others wait for a slot.
    """
    if decode_slots < 1:
        raise ConfigError(f"decode_slots must be at least 1, not {decode_slots}")
    router = APIRouter(
        prefix=prefix,
        tags=["Image Caption"],
        dependencies=[Depends(auth)] if auth else [],
        route_class=route_class(max_request_bytes),
    )
    slots = threading.BoundedSemaphore(decode_slots)
    router.decode_slots = slots  # type: ignore[attr-defined]
    lock = queue_lock if queue_lock is not None else contextlib.nullcontext()
    registry = jobs if jobs is not None else process_registry()
    router.jobs = registry  # type: ignore[attr-defined]

    def guarded(work: Callable[[], Any]) -> Any:
        try:
            return work()
        except HTTPException:
            raise
        except IcgError as err:
            raise http_error(err) from err
        except Exception as err:  # a bug: log it, answer 500 with the reason
            logger.exception("ICG API request failed")
            raise HTTPException(
                status_code=500, detail=f"internal error: {type(err).__name__}: {err}"
            ) from err

    @router.get("/models", response_model=ModelsResponse)
    def list_models() -> dict[str, Any]:
        return guarded(lambda: describe_models(service))

    @router.post("/caption", response_model=CaptionResponse)
    def caption(request: CaptionRequest) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            keywords = request.keywords
            if isinstance(keywords, str):
                keywords = [k for k in keywords.split(",") if k.strip()]
            if keywords is not None and len(keywords) > MAX_KEYWORDS:
                raise HTTPException(status_code=422, detail=f"keywords: at most {MAX_KEYWORDS}")
            if request.image is None and not keywords:
                raise HTTPException(status_code=422, detail="give an image (base64) or keywords")
            model = check_model(service, request.model)
            template = prompt_template(service, request.template)
            overrides = decoding_overrides(request.decoding, request.num_candidates)
            options = CaptionOptions(style=request.style, force=request.force or (), ban=request.ban or ())
            with slots if request.image is not None else contextlib.nullcontext():
                limit = max_pixels() if callable(max_pixels) else max_pixels
                image = decode_image(request.image, limit) if request.image is not None else None
                with lock:
                    if keywords:
                        result = service.caption_keywords(keywords, model, overrides, options, image=image)
                    else:
                        result = service.caption(image, model, overrides, options)
                del image  # the slot is for the decoded image: free it before the next request decodes
            prompt = template.compose(result.caption, [k.text for k in result.keywords])
            return caption_payload(result, prompt)

        def in_snapshot() -> dict[str, Any]:
            snapshot = getattr(service, "snapshot", None)  # the WebUI's: one reading of its settings
            with snapshot() if snapshot is not None else contextlib.nullcontext():
                return work()

        return guarded(in_snapshot)

    @router.post("/batch", response_model=JobOut, status_code=202)
    def start_batch(request: BatchRequest) -> dict[str, Any]:
        if hide_dirs:
            raise HTTPException(
                status_code=403, detail="folder batches are disabled on this server (--hide-ui-dir-config)"
            )

        def work() -> dict[str, Any]:
            model = check_model(service, request.model)
            options = batch_options(service, request, model)
            plan = service.plan_batch(options)  # fails fast on an unreadable folder; walked once
            work = batch_work(service, options, lock, plan)
            job = registry.submit(work, kind="batch", total=len(plan.todo), label=str(options.root))
            return job.snapshot()

        return guarded(work)

    @router.get("/batch", response_model=JobsResponse)
    def list_jobs() -> dict[str, Any]:
        return {"jobs": registry.snapshots()}

    @router.get("/batch/{job_id}", response_model=JobOut)
    def job_status(job_id: str) -> dict[str, Any]:
        return guarded(lambda: registry.get(job_id).snapshot())

    @router.post("/batch/{job_id}/stop", response_model=JobOut)
    def stop_job(job_id: str) -> dict[str, Any]:
        return guarded(lambda: registry.stop(job_id).snapshot())

    @router.post("/unload", response_model=UnloadResponse)
    def unload() -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with lock:
                if hasattr(service, "unload"):
                    service.unload()
                else:
                    service.manager.unload()
            return {"unloaded": True, "loaded": service.manager.loaded()}

        return guarded(work)

    app.include_router(router)
    logger.info("ICG API mounted at %s%s", prefix, " (with auth)" if auth else "")
    return router


# ------------------------------------------------------------------------------------------ batches
def batch_options(service: Any, request: BatchRequest, model: str) -> Any:
    """The engine's ``BatchOptions`` for a request; the service's settings fill what it leaves out."""
    from icg.batch.engine import BatchOptions
    from icg.options import BATCH_TEMPLATE
    from icg.prompt import PromptTemplate

    folder = Path(request.folder).expanduser()
    if not folder.is_dir():
        raise HTTPException(status_code=404, detail=f"folder not found on the server: {folder}")
    defaults = dict(service.batch_defaults()) if hasattr(service, "batch_defaults") else {}
    base = defaults.pop("template", None) or PromptTemplate(BATCH_TEMPLATE)
    changes = _dump(request.template) if request.template is not None else {}
    given = {**BATCH.pick(request), "output_dir": request.output_dir, "manifest": request.manifest}
    values = {k: v for k, v in defaults.items() if k in _BATCH_DEFAULT_KEYS}
    values.update({k: v for k, v in given.items() if v is not None})
    return BatchOptions(
        root=str(folder),
        model=model,
        template=PromptTemplate(**{**_fields(base), **changes}),
        decoding={
            **dict(defaults.get("decoding") or {}),
            **decoding_overrides(request.decoding, request.num_candidates),
        },
        caption=CaptionOptions(style=request.style),
        dry_run=request.dry_run,
        **values,
    )


_BATCH_DEFAULT_KEYS = ("policy", "sidecar_extension", "batch_size", "separator")
