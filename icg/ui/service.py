"""What the panels call: a thin, gradio-free layer over the model manager, the pipeline and the folder engine.

The panels never touch models directly; they call a ``CaptionService`` handed to them. The standalone app
uses this one as is; the WebUI adapter subclasses it (or passes any object with the same methods) to wrap
each call in the WebUI's queue lock, ``shared.state`` job and device etiquette.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import make_dataclass
from typing import Any, Optional

from icg.captioners.result import CaptionResult
from icg.errors import ConfigError, IcgError, ModelNotFound
from icg.options import (
    BATCH,
    BATCH_TEMPLATE,
    CAPTION,
    DECODING,
    DEFAULT_MODEL,
    MODEL_DEFAULT,
    RANDOM_SEED,
    TEMPLATE,
    CaptionOptions,
)

logger = logging.getLogger(__name__)


#: The panels' own initial values beside the options: the model, the batch template and the folders.
#: ``allow_folders`` False (the WebUI's ``--hide-ui-dir-config``): the folder fields are fixed to the
#: values given here and the user cannot type other paths.
_PANEL_FIELDS = (
    ("model", Optional[str], None),  # noqa: UP045 - make_dataclass needs a runtime type
    ("batch_template", str, BATCH_TEMPLATE),
    ("batch_folder", str, ""),
    ("output_folder", str, ""),
    ("manifest", str, ""),
    ("allow_folders", bool, True),
)
#: Decoding options start empty (the model's own default), except the seed: a new one each time.
_DECODING_INITIAL = {**dict.fromkeys((*DECODING.names, *CAPTION.names)), "seed": RANDOM_SEED}


def _option_fields() -> list[tuple[str, Any, Any]]:
    out = [(name, Any, value) for name, value in _DECODING_INITIAL.items()]
    out += [(o.name, Any, o.default) for group in (TEMPLATE, BATCH) for o in group]
    return out


def _check_defaults(self: Any) -> None:
    for group in (DECODING, CAPTION, TEMPLATE, BATCH):
        for option in group:
            given = getattr(self, option.name)
            if not (isinstance(given, str) and given == MODEL_DEFAULT):
                object.__setattr__(self, option.name, option.check(given, "UI defaults"))


UiDefaults = make_dataclass(
    "UiDefaults",
    [*_PANEL_FIELDS, *_option_fields()],
    frozen=True,
    namespace={"__post_init__": _check_defaults, "__module__": __name__},
)
UiDefaults.__doc__ = """Initial values of the panels (the WebUI fills them from its settings): one field
per option of ``icg.options`` (DECODING, CAPTION, TEMPLATE, BATCH; checked by ``Option.check``) and
the panels' own fields. ``model`` None: the service's default model. Decoding values None: the model's
own default."""


class CaptionService:
    """Captioning for the panels: models to offer, one image, keywords (SBG), and folder batches.

    ``models`` are offered first in the model list (paths or ids given on the command line);
    ``default_model`` is preselected (default: the first of ``models``, else ``clip-prefix-flickr8k``).
    Only the models of ``model_choices`` are loaded, whatever name or path a client sends (a dropdown
    does not stop a request); ``allow_model_paths`` lets any model through. Errors a user can cause
    surface as ``IcgError``; the panels show their message.
    """

    #: Added to the refusal of an unlisted model: how this front end lets other paths through.
    model_paths_hint = ""

    def __init__(
        self,
        manager: Any,
        *,
        models: Sequence[str] = (),
        default_model: str | None = None,
        batch_size: int = 8,
        allow_model_paths: bool = False,
    ) -> None:
        self.manager = manager
        self.extra_models = [str(m) for m in models]
        self._default = default_model or (self.extra_models[0] if self.extra_models else DEFAULT_MODEL)
        self.batch_size = batch_size
        self.allow_model_paths = allow_model_paths

    # ------------------------------------------------------------------------------------ models
    def default_model(self) -> str:
        return self._default

    def model_choices(self) -> list[str]:
        """The extra models, the default, then the captioners of the model inventory
        (``icg.models.inventory``: the registry's, installed or not, then local model folders)."""
        return _unique([*self.extra_models, self._default, *_inventory_captioners(self.manager)])

    def checked_model(self, model: str | None) -> str:
        """``model`` if it may be loaded here (see the class), else a ``ModelNotFound`` with the hint."""
        if self.allow_model_paths and model:
            return model
        try:
            return offered_model(self, model)
        except ModelNotFound as err:
            if not self.model_paths_hint:
                raise
            raise ModelNotFound(f"{err}; {self.model_paths_hint}") from None

    # ------------------------------------------------------------------------------------ captions
    def caption(
        self,
        image: Any,
        model: str,
        decoding: Mapping[str, Any] | None = None,
        options: CaptionOptions | None = None,
    ) -> CaptionResult:
        """Caption one image (a PIL image, a path or bytes); ``decoding`` overrides the model's defaults."""
        from icg.pipeline import caption_images

        if image is None:
            raise ConfigError("no image: upload or paste an image first")
        model = self.checked_model(model)
        return caption_images(self.manager, model, [image], decoding=decoding, options=options)[0]

    def caption_keywords(
        self,
        keywords: Sequence[str],
        model: str,
        decoding: Mapping[str, Any] | None = None,
        options: CaptionOptions | None = None,
        image: Any = None,
    ) -> CaptionResult:
        """Write a caption from ``keywords`` with an SBG ``model``; with ``image`` the candidates are
        re-ranked against it, as in a normal SBG caption."""
        from icg.pipeline import caption_keywords

        return caption_keywords(
            self.manager, self.checked_model(model), keywords, decoding=decoding, options=options, image=image
        )

    # ------------------------------------------------------------------------------------ folders
    def plan_batch(self, options: Any) -> Any:
        from icg.batch.engine import plan_batch

        self.checked_model(options.model)
        return plan_batch(options)

    def run_batch(
        self,
        options: Any,
        *,
        on_progress: Callable[..., Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_result: Callable[..., Any] | None = None,
        plan: Any = None,
    ) -> Any:
        from icg.batch.engine import run_batch

        self.checked_model(options.model)
        return run_batch(
            self.manager,
            options,
            on_progress=on_progress,
            should_stop=should_stop,
            on_result=on_result,
            plan=plan,
        )


def offered_model(service: Any, model: str | None) -> str:
    """``model`` (or the default) if it is one of ``service.model_choices()``; ``ModelNotFound`` otherwise.
    The one check of every front end (the API, the app, the WebUI tab): only listed models are loaded,
    never any path a client names."""
    name = model or service.default_model()
    choices = service.model_choices()
    if name not in choices:
        raise ModelNotFound(f"unknown model {name!r}; choose one of: {', '.join(choices)}")
    return name


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def _inventory_captioners(manager: Any) -> list[str]:
    """The captioners of the model inventory: the registry's (installed or not), then local folders."""
    from icg.models.inventory import captioner_ids, inventory, supplied_kinds

    try:  # not manager_inventory: what is loaded is not needed here, and asking waits for a running job
        return captioner_ids(inventory(manager.models_dir, supplied=supplied_kinds(manager.runtime)))
    except IcgError as err:  # a broken registry must not take the whole UI down
        logger.warning("model inventory unreadable: %s", err)
        return []
