"""Fake ``modules.scripts`` (1.10): ``Script``, ``AlwaysVisible``, ``OnComponent`` and a ``ScriptRunner``
that does what the WebUI does with an always-visible script: ``show``, ``after_component`` for every
component the page creates, then ``ui`` inside the scripts section, and ``before_process`` per job."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modules import paths

AlwaysVisible = object()


@dataclass
class OnComponent:
    component: object


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


current_basedir = paths.script_path


def basedir():
    return current_basedir


class ScriptRunner:
    """The part of the WebUI's runner an always-visible script meets."""

    def __init__(self, script_classes, is_img2img):
        self.scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]
        for cls in script_classes:
            script = cls()
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(is_img2img)
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
            elif visibility:
                self.scripts.append(script)

    def after_component(self, component, **kwargs):
        for script in self.scripts:
            for elem_id, callback in script.on_after_component_elem_id or []:
                if elem_id == getattr(component, "elem_id", None):
                    callback(OnComponent(component=component))
            script.after_component(component, **kwargs)

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            self.inputs += list(controls or [])
            script.args_to = len(self.inputs)
        return self.inputs

    def before_process(self, p):
        for script in self.alwayson_scripts:
            script.before_process(p, *p.script_args[script.args_from : script.args_to])


scripts_txt2img = None
scripts_img2img = None
scripts_current = None


def reset() -> None:
    global scripts_txt2img, scripts_img2img, scripts_current
    scripts_txt2img = scripts_img2img = scripts_current = None
