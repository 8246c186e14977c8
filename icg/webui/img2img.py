"""The caption button beside img2img's interrogate buttons (``Img2ImgCaptionScript``)."""

from __future__ import annotations

import logging
from typing import Any

from icg.errors import ConfigError
from icg.prompt import MERGE_MODES, merge_prompt
from icg.webui import host
from icg.webui.service import get_service

logger = logging.getLogger(__name__)

TAB_TITLE = "Image Caption"
IMG2IMG_BUTTON_ID = "icg_img2img_caption"
#: img2img's image inputs, in the order of its mode tabs (img2img, Sketch, Inpaint, Inpaint sketch,
#: Inpaint upload); the built-in interrogate buttons read the same ones.
IMG2IMG_IMAGE_IDS = ("img2img_image", "img2img_sketch", "img2maskimg", "inpaint_sketch", "img_inpaint_base")


def pick_image(tab_index: Any, *images: Any) -> Any:
    """The init image of img2img's current mode tab (the others as fallbacks), as a PIL image or None.

    Sketch and inpaint editors hand over dicts (gradio 3: ``{"image", "mask"}``; gradio 4:
    ``{"background", "layers", "composite"}``)."""
    try:
        index = int(tab_index)
    except (TypeError, ValueError):
        index = 0
    ordered = list(images)
    if 0 <= index < len(ordered):
        ordered = [ordered[index]] + ordered[:index] + ordered[index + 1 :]
    for image in ordered:
        if isinstance(image, dict):
            image = image.get("image") or image.get("composite") or image.get("background")
        if hasattr(image, "shape") and hasattr(image, "dtype"):  # a numpy image
            from PIL import Image

            image = Image.fromarray(image)
        if image is not None and not isinstance(image, str):
            return image
    return None


def img2img_caption(tab_index: Any, prompt: str, *images: Any) -> str:
    """The img2img button: caption the init image, merge the prompt into img2img's prompt box."""
    image = pick_image(tab_index, *images)
    if image is None:
        raise ConfigError("no init image: add one to img2img first")
    service = get_service()
    with service.snapshot() as settings:
        model = settings.model_for(settings.img2img_model)
        result = service.caption(image, model)
    composed = settings.template_obj().compose(result.caption, [k.text for k in result.keywords])
    mode = settings.prompt_mode if settings.prompt_mode in MERGE_MODES else "replace"
    return merge_prompt(prompt or "", composed, mode)


def wire_img2img_button(button: Any, prompt: Any, images: list[Any]) -> None:
    """Connect the caption button: inputs (mode tab index, prompt, image components), output the prompt."""
    import gradio as gr

    from icg.ui.handlers import listen

    tab_index = gr.Number(value=0, visible=False, elem_id="icg_img2img_tab_index")
    js = (
        "(...a) => { a[0] = (typeof get_tab_index === 'function') ? get_tab_index('mode_img2img') : 0; "
        "return a; }"
    )
    inputs = [tab_index, prompt, *images]
    listen(button.click, img2img_caption, inputs, [prompt], **host.js_kwargs(button.click, js))


def img2img_script_class() -> type:
    """The ``scripts.Script`` that puts a caption button beside img2img's interrogate buttons.

    It watches img2img's components as they are built (``after_component``): right after the DeepBooru
    button it adds its own in the same tool row, and it collects the prompt box and the image inputs.
    In ``ui()`` (after all of them exist) it connects the button. Where the tool row was not found (a
    changed layout, Forge), the button goes into an "Image Caption" accordion among img2img's scripts.
    """
    import gradio as gr

    scripts = host.required("scripts")

    class Img2ImgCaptionScript(scripts.Script):
        def __init__(self) -> None:
            super().__init__()
            self.button = None
            self.prompt = None
            self.images: dict[str, Any] = {}
            self.last_image_id: str | None = None
            self.wired = False

        def title(self) -> str:
            return "Image Caption"

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible if is_img2img else False

        def after_component(self, component: Any, **kwargs: Any) -> None:
            elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
            if not elem_id or elem_id == IMG2IMG_BUTTON_ID:
                return
            classes = kwargs.get("elem_classes") or getattr(component, "elem_classes", None) or []
            classes = [classes] if isinstance(classes, str) else list(classes)
            if elem_id == "img2img_prompt":
                self.prompt = component
            elif elem_id in IMG2IMG_IMAGE_IDS:
                self.images[elem_id] = component
                self.last_image_id = elem_id
            elif "logical_image_background" in classes and self.last_image_id:
                # Forge's canvas: the id names an HTML block; the picture is its "background" component
                self.images[self.last_image_id] = component
            elif elem_id == "deepbooru" and self.button is None:
                self.button = _tool_button()

        def ui(self, is_img2img: bool) -> list[Any]:
            if self.wired or not is_img2img:
                return []
            if self.prompt is None:  # no page being built (an API call) or an unknown layout
                return []
            if self.button is None:
                with gr.Accordion(TAB_TITLE, open=False, elem_id="icg_img2img_accordion"):
                    self.button = gr.Button(
                        "Caption the init image into the prompt", elem_id=IMG2IMG_BUTTON_ID
                    )
            images = [self.images[i] for i in IMG2IMG_IMAGE_IDS if i in self.images]
            if not images:
                logger.warning("Image Caption: img2img's image inputs were not found; the button is inactive")
                return []
            wire_img2img_button(self.button, self.prompt, images)
            self.wired = True
            return []

    return Img2ImgCaptionScript


def _tool_button() -> Any:
    import gradio as gr

    components = host.module("ui_components")
    tool = getattr(components, "ToolButton", None)
    if tool is not None:
        return tool("\U0001f58b", elem_id=IMG2IMG_BUTTON_ID)  # lower-left fountain pen
    return gr.Button("\U0001f58b", elem_id=IMG2IMG_BUTTON_ID, elem_classes=["tool"])

