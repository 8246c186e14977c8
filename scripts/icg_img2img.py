"""The caption button beside img2img's interrogate buttons.

The WebUI registers every ``scripts.Script`` subclass it finds in this module; the class is built by the
adapter (``icg.webui.img2img.img2img_script_class``), which holds all of its logic.
"""

from __future__ import annotations

from icg import webui

Img2ImgCaptionScript = webui.img2img_script_class()
