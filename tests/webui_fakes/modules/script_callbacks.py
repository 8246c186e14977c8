"""Fake ``modules.script_callbacks`` (1.10): the registration functions an extension calls, the
``callback_map`` they fill, and the ``*_callback`` functions the WebUI uses to fire them."""

from __future__ import annotations

import dataclasses
import inspect
import os


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = None


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    callback_name = f"ext/{os.path.basename(filename)}/{category}" + (f"/{name}" if name else "")
    callbacks.append(ScriptCallback(filename, fun, callback_name))


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
)


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


# ---------------------------------------------------------------------------------- fired by the WebUI
# The real ones catch and report every exception; the fakes let it propagate so tests see it.
def app_started_callback(demo, app):
    for c in callback_map["callbacks_app_started"]:
        c.callback(demo, app)


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c.callback() or []
    return res


def ui_settings_callback():
    for c in callback_map["callbacks_ui_settings"]:
        c.callback()


def image_saved_callback(params: ImageSaveParams):
    for c in callback_map["callbacks_image_saved"]:
        c.callback(params)


def after_component_callback(component, **kwargs):
    for c in callback_map["callbacks_after_component"]:
        c.callback(component, **kwargs)


def script_unloaded_callback():
    for c in reversed(callback_map["callbacks_script_unloaded"]):
        c.callback()


def app_reload_callback():
    for c in callback_map["callbacks_on_reload"]:
        c.callback()


# ---------------------------------------------------------------------------------- called by extensions
def on_app_started(callback, *, name=None):
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_image_saved(callback, *, name=None):
    add_callback(
        callback_map["callbacks_before_image_saved"], callback, name=name, category="before_image_saved"
    )


def on_image_saved(callback, *, name=None):
    add_callback(callback_map["callbacks_image_saved"], callback, name=name, category="image_saved")


def on_before_component(callback, *, name=None):
    add_callback(callback_map["callbacks_before_component"], callback, name=name, category="before_component")


def on_after_component(callback, *, name=None):
    add_callback(callback_map["callbacks_after_component"], callback, name=name, category="after_component")


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")
