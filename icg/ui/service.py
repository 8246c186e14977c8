"""What the panels call: a thin, gradio-free layer over the model manager, the pipeline and the folder engine.

The panels never touch models directly; they call a ``CaptionService`` handed to them. The standalone app
uses this one as is; the WebUI adapter subclasses it (or passes any object with the same methods) to wrap
each call in the WebUI's queue lock, ``shared.state`` job and device etiquette.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from icg.captioners.result import CaptionResult
from icg.errors import ConfigError, IcgError
from icg.options import DEFAULT_MODEL, DEFAULT_TEMPLATE, CaptionOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UiDefaults:
    """Initial values of the panels (the WebUI fills them from its settings).

    ``model`` None: the service's default model. Decoding values None: the model's own default.
    ``allow_folders`` False (the WebUI's ``--hide-ui-dir-config``): the folder fields are fixed to the
    values given here and the user cannot type other paths.
    """

    model: str | None = None
    strategy: str | None = None
    num_beams: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int = -1
    num_samples: int | None = None
    template: str = DEFAULT_TEMPLATE
    prefix: str = ""
    suffix: str = ""
    lowercase: bool = False
    batch_folder: str = ""
    output_folder: str = ""
    manifest: str = ""
    sidecar_extension: str = ".txt"
    sidecar_policy: str = "skip"
    recursive: bool = True
    batch_size: int = 0  # 0: automatic
    allow_folders: bool = True


class CaptionService:
    """Captioning for the panels: models to offer, one image, keywords (SBG), and folder batches.

    ``models`` are offered first in the model list (paths or ids given on the command line);
    ``default_model`` is preselected (default: the first of ``models``, else ``clip-prefix-flickr8k``).
    Errors a user can cause surface as ``IcgError``; the panels show their message.
    """

    def __init__(
        self,
        manager: Any,
        *,
        models: Sequence[str] = (),
        default_model: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.manager = manager
        self.extra_models = [str(m) for m in models]
        self._default = default_model or (self.extra_models[0] if self.extra_models else DEFAULT_MODEL)
        self.batch_size = batch_size

    # ------------------------------------------------------------------------------------ models
    def default_model(self) -> str:
        return self._default

    def model_choices(self) -> list[str]:
        """The extra models, the default, then the captioners of the model inventory
        (``icg.models.inventory``: the registry's, installed or not, then local model folders)."""
        return _unique([*self.extra_models, self._default, *_inventory_captioners(self.manager)])

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
            self.manager, model, keywords, decoding=decoding, options=options, image=image
        )

    # ------------------------------------------------------------------------------------ folders
    def plan_batch(self, options: Any) -> Any:
        from icg.batch.engine import plan_batch

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

        return run_batch(
            self.manager,
            options,
            on_progress=on_progress,
            should_stop=should_stop,
            on_result=on_result,
            plan=plan,
        )


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
