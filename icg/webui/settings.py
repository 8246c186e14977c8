"""The "Image Caption" settings section (keys ``icg_*``), read once per job into ``Settings``."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from icg.errors import ConfigError
from icg.options import (
    BATCH,
    DECODING,
    DEFAULT_MODEL,
    MODEL_DEFAULT,
    RUNTIME,
    TEMPLATE,
    UPLOAD_MAX_MEGAPIXELS,
    Option,
)
from icg.prompt import MERGE_MODES, PromptTemplate
from icg.webui import host

logger = logging.getLogger(__name__)

SECTION = ("icg", "Image Caption")
SETTINGS_CATEGORY = "postprocessing"  # where the WebUI files its own "Interrogate" section
DEFAULT_CHOICE = "default"  # the img2img / auto-caption model setting: "use the default model"
#: Settings that are options of ``icg.options``: their label, bounds, choices and help come from there.
#: ``strategy`` adds "model default"; ``max_new_tokens`` 0 and ``seed`` -1 leave it to the model.
OPTION_SETTINGS: dict[str, Option] = {
    "strategy": DECODING["strategy"],
    "num_beams": DECODING["num_beams"],
    "max_new_tokens": DECODING["max_new_tokens"],
    "num_candidates": DECODING["num_samples"],
    "seed": DECODING["seed"],
    "template": TEMPLATE["template"],
    "prefix": TEMPLATE["prefix"],
    "suffix": TEMPLATE["suffix"],
    "sidecar_policy": BATCH["policy"],
    "sidecar_extension": BATCH["sidecar_extension"],
    "upload_max_megapixels": UPLOAD_MAX_MEGAPIXELS,
    "dtype": RUNTIME["dtype"],
    "threads": RUNTIME["threads"],
}
#: Where a setting's default differs from its option's (None: the model's own default applies).
UNSET = {"strategy": MODEL_DEFAULT, "max_new_tokens": 0, "seed": -1}


@dataclass(frozen=True)
class Settings:
    """The ``icg_*`` settings, read from ``shared.opts`` once per job (``Settings.read``)."""

    default_model: str = DEFAULT_MODEL
    img2img_model: str = DEFAULT_CHOICE
    strategy: str = UNSET["strategy"]
    num_beams: int = DECODING["num_beams"].default
    max_new_tokens: int = UNSET["max_new_tokens"]
    num_candidates: int = 5  # SBG's own default number of candidates
    seed: int = UNSET["seed"]
    template: str = TEMPLATE["template"].default
    prefix: str = TEMPLATE["prefix"].default
    suffix: str = TEMPLATE["suffix"].default
    prompt_mode: str = "replace"
    sidecar_policy: str = BATCH["policy"].default
    sidecar_extension: str = BATCH["sidecar_extension"].default
    keep_models_in_memory: bool = False
    models_dir: str = ""
    allow_download: bool = True
    autocaption: bool = False
    autocaption_model: str = DEFAULT_CHOICE
    upload_max_megapixels: int = UPLOAD_MAX_MEGAPIXELS.default
    dtype: str = RUNTIME["dtype"].default
    threads: int = RUNTIME["threads"].default

    @classmethod
    def read(cls) -> Settings:
        import dataclasses

        values = {}
        for f in dataclasses.fields(cls):
            value = host.opt(f"icg_{f.name}", f.default)
            if isinstance(f.default, bool):
                value = bool(value)
            elif isinstance(f.default, int):
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    value = f.default
            else:
                value = str(value).strip() if value is not None else f.default
            values[f.name] = value
        return cls(**values)

    def model_for(self, choice: str) -> str:
        return self.default_model if not choice or choice == DEFAULT_CHOICE else choice

    def decoding_overrides(self) -> dict[str, Any]:
        """Decoding defaults from the settings (empty where the model's own defaults apply); a value
        outside its option's bounds (an edited config.json) is left out with a warning."""
        out: dict[str, Any] = {}
        for name, option in OPTION_SETTINGS.items():
            value = getattr(self, name)
            if option.name not in DECODING or value == UNSET.get(name):
                continue
            if name == "num_beams" and self.strategy != "beam":
                continue
            try:
                out[option.name] = option.check(value, f"setting icg_{name}")
            except ConfigError as err:
                logger.warning("Image Caption: %s; using the model's default", err)
        return out

    def checked(self, name: str) -> Any:
        """A setting that is an option (``dtype``, ``threads``, ``upload_max_megapixels``), checked against
        it; a value outside it (an edited config.json) gives the option's default, with a warning."""
        option = OPTION_SETTINGS[name]
        try:
            return option.check(getattr(self, name), f"setting icg_{name}")
        except ConfigError as err:
            logger.warning("Image Caption: %s; using %s", err, option.default)
            return option.default

    def upload_max_pixels(self) -> int:
        """The HTTP API's limit on an image (``icg_upload_max_megapixels``) in pixels."""
        return self.checked("upload_max_megapixels") * 1_000_000

    def template_obj(self) -> PromptTemplate:
        try:
            return PromptTemplate(
                template=self.template or "{caption}", prefix=self.prefix, suffix=self.suffix
            )
        except ConfigError as err:
            logger.warning("the prompt template setting is invalid (%s); using the default", err)
            return PromptTemplate(prefix=self.prefix, suffix=self.suffix)


def model_choices() -> list[str]:
    """The models to offer (listed afresh each time: the settings' refresh button calls this too)."""
    from icg.webui.service import get_service

    try:
        return get_service().model_choices()
    except Exception:  # settings must render even when the models folder is unreadable
        logger.warning("could not list the models", exc_info=True)
        return [DEFAULT_MODEL]


def on_ui_settings() -> None:
    """The "Image Caption" settings section (``on_ui_settings`` callback)."""
    import gradio as gr

    shared = host.shared()
    option = shared.OptionInfo
    takes_category = "category_id" in inspect.signature(option.__init__).parameters

    def info(default, label, component=None, component_args=None, **kwargs):
        item = option(default, label, component, component_args, section=SECTION, **kwargs)
        if takes_category:
            item.category_id = SETTINGS_CATEGORY
        return item

    def model_args():
        return {"choices": model_choices()}

    def model_or_default_args():
        return {"choices": [DEFAULT_CHOICE, *model_choices()]}

    def rendered(name: str, note: str = "") -> Any:
        """A setting rendered from its ``icg.options`` option."""
        opt = OPTION_SETTINGS[name]
        default = getattr(Settings, name)
        label = f"{opt.label}{note}"
        if opt.choices:
            choices = [MODEL_DEFAULT, *opt.choices] if name in UNSET else list(opt.choices)
            return info(default, label, gr.Radio, {"choices": choices})
        if opt.type is int and name not in ("seed", "threads"):
            low = 0 if name in UNSET else opt.minimum
            return info(default, label, gr.Slider, {"minimum": low, "maximum": opt.maximum, "step": 1})
        if opt.type is int:
            return info(default, label, gr.Number, {"precision": 0})
        return info(default, label)

    hide_dirs = dict(getattr(shared, "hide_dirs", None) or {"visible": not host.hide_dirs()})
    items = {
        "icg_default_model": info(
            DEFAULT_MODEL, "Default captioning model", gr.Dropdown, model_args, refresh=model_choices
        ),
        "icg_img2img_model": info(
            DEFAULT_CHOICE,
            "Model of the img2img caption button",
            gr.Dropdown,
            model_or_default_args,
            refresh=model_choices,  # a model imported since the page loaded
        ),
        "icg_strategy": rendered("strategy"),
        "icg_num_beams": rendered("num_beams", " (beam search)"),
        "icg_max_new_tokens": rendered("max_new_tokens", " (0: the model's default)"),
        "icg_num_candidates": rendered("num_candidates", " to write and re-rank (SBG)"),
        "icg_seed": rendered("seed", " for sampling (-1: random)"),
        "icg_template": rendered("template", ": {prefix} {caption} {keywords} {suffix}"),
        "icg_prefix": rendered("prefix", " (e.g. a LoRA trigger word)"),
        "icg_suffix": rendered("suffix"),
        "icg_prompt_mode": info(
            "replace", "img2img caption button: the prompt box is", gr.Radio, {"choices": list(MERGE_MODES)}
        ),
        "icg_sidecar_policy": rendered("sidecar_policy", " (batch, auto-caption)"),
        "icg_sidecar_extension": rendered("sidecar_extension"),
        "icg_keep_models_in_memory": info(
            False, "Keep the models on the GPU between jobs (else moved to RAM after each, like Interrogate)"
        ),
        "icg_models_dir": info(
            "", "Models folder (empty: <models>/icg; --icg-models-dir wins)", component_args=hide_dirs
        ),
        "icg_allow_download": info(True, "Download missing models when they are first used"),
        "icg_dtype": rendered("dtype", " (auto: fp32 under --no-half; int8: CPU only)"),
        "icg_threads": rendered("threads", " on the CPU (0: all but one from 4 threads up)"),
        "icg_autocaption": info(False, "Write a caption file beside every generated image"),
        "icg_autocaption_model": info(
            DEFAULT_CHOICE,
            "Model for those caption files",
            gr.Dropdown,
            model_or_default_args,
            refresh=model_choices,
        ),
        "icg_upload_max_megapixels": rendered("upload_max_megapixels", " (with --api)"),
    }
    if callable(getattr(items["icg_autocaption"], "info", None)):
        items["icg_autocaption"].info(
            "after each generation, in the background; uses the caption file settings"
        )
        items["icg_models_dir"].info("one folder per model id; files can be copied there by hand")
    restricted = getattr(shared, "restricted_opts", None)
    if isinstance(restricted, set):
        restricted.add(
            "icg_models_dir"
        )  # a folder setting, locked like the WebUI's own by --hide-ui-dir-config
    for key, item in items.items():
        shared.opts.add_option(key, item)

