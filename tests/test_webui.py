"""The WebUI adapter (icg/webui/) and scripts/*.py against a fake ``modules`` package (tests/webui_fakes)
with the WebUI's real signatures: callbacks registered, settings, the tab built under the installed gradio,
Send-to and Append buttons, the img2img button, device etiquette, shared.state jobs, the API mount and
auto-captions, driven with the fixture models."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from icg.options import AS_THE_FILES_SAY, IMPORT
from tests.gradio_errors import shown_error
from tests.webui_support import (
    fake_webui,
    fixture_files,
    load_script,
    make_manager,
    models_folder,
    png_base64,
    write_images,
)

gr = pytest.importorskip("gradio")

ICG_KEYS = {
    "icg_default_model",
    "icg_img2img_model",
    "icg_strategy",
    "icg_num_beams",
    "icg_max_new_tokens",
    "icg_num_candidates",
    "icg_seed",
    "icg_template",
    "icg_prefix",
    "icg_suffix",
    "icg_prompt_mode",
    "icg_sidecar_policy",
    "icg_sidecar_extension",
    "icg_keep_models_in_memory",
    "icg_models_dir",
    "icg_allow_download",
    "icg_autocaption",
    "icg_autocaption_model",
    "icg_upload_max_megapixels",
    "icg_dtype",
    "icg_threads",
}


@pytest.fixture(scope="module")
def files():
    return fixture_files()


@pytest.fixture(scope="module")
def models_dir(files, tmp_path_factory):
    return models_folder(tmp_path_factory.mktemp("webui-models"), files)


@pytest.fixture(scope="module")
def manager(files, models_dir):
    manager = make_manager(files, models_dir)
    yield manager
    manager.unload()


@dataclasses.dataclass
class Env:
    modules: object
    adapter: object
    files: dict
    tmp: object

    @property
    def shared(self):
        from modules import shared

        return shared

    @property
    def callbacks(self):
        from modules import script_callbacks

        return script_callbacks

    def start(self, manager=None):
        """Load both scripts, register the settings, use a service over ``manager``."""
        self.tab_script = load_script("icg_tab")
        self.img2img_script = load_script("icg_img2img")
        self.callbacks.ui_settings_callback()
        self.shared.opts.icg_default_model = self.files["clip_prefix_pt"]
        self.shared.opts.icg_max_new_tokens = 4
        if manager is not None:
            self.service = self.adapter.service.WebUIService(manager, models=(self.files["clip_prefix_pt"],))
            self.adapter.service.set_service(self.service)
        return self


@pytest.fixture
def webui_env(files, models_dir, tmp_path, monkeypatch, request):
    """The fake WebUI with the extension's flags; ``webui_env.flags`` may be set through indirect params."""
    flags = dict(icg_models_dir=str(models_dir), icg_offline=True)
    flags.update(getattr(request, "param", {}) or {})
    monkeypatch.setenv("ICG_FAKE_WEBUI_ROOT", str(tmp_path / "webui"))
    with fake_webui(**flags) as modules:
        from icg import webui as adapter

        adapter.service.reset_service()
        try:
            yield Env(modules=modules, adapter=adapter, files=files, tmp=tmp_path)
        finally:
            adapter.service.set_service(None)
            adapter.tab._COMPONENTS.clear()
            adapter.autocaption._AUTOCAPTIONER = None


def events(blocks):
    """(trigger ids, input ids, output ids, js) of every event of ``blocks`` (gradio 3.x and 4+)."""
    deps = getattr(blocks, "dependencies", None)
    if isinstance(deps, list) and (not deps or isinstance(deps[0], dict)):
        return [(set(d["targets"]), list(d["inputs"]), list(d["outputs"]), d.get("js")) for d in deps]
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    return [
        ({t[0] for t in f.targets}, [c._id for c in f.inputs], [c._id for c in f.outputs], f.js) for f in fns
    ]


# ------------------------------------------------------------------------------------------ registration
def test_scripts_register_every_callback(webui_env):
    env = webui_env.start()
    callback_map = env.callbacks.callback_map
    expected = {
        "callbacks_ui_settings": env.adapter.on_ui_settings,
        "callbacks_ui_tabs": env.adapter.on_ui_tabs,
        "callbacks_after_component": env.adapter.on_after_component,
        "callbacks_app_started": env.adapter.on_app_started,
        "callbacks_image_saved": env.adapter.on_image_saved,
        "callbacks_script_unloaded": env.adapter.on_script_unloaded,
    }
    for name, function in expected.items():
        assert [c.callback for c in callback_map[name]] == [function], name
    from modules import scripts

    script_class = env.img2img_script.Img2ImgCaptionScript
    assert issubclass(script_class, scripts.Script)
    script = script_class()
    assert script.show(True) is scripts.AlwaysVisible and script.show(False) is False
    assert script.title() == "Image Caption"


def test_settings_section_keys_and_defaults(webui_env):
    env = webui_env.start()
    labels = env.shared.opts.data_labels
    icg = {key: info for key, info in labels.items() if key.startswith("icg_")}
    assert set(icg) == ICG_KEYS
    assert {info.section for info in icg.values()} == {("icg", "Image Caption")}
    assert {info.category_id for info in icg.values()} == {"postprocessing"}
    assert env.shared.opts.icg_autocaption is False
    assert env.shared.opts.icg_keep_models_in_memory is False
    assert env.shared.opts.icg_sidecar_policy == "skip"
    assert {f"icg_{f.name}" for f in dataclasses.fields(env.adapter.settings.Settings)} == ICG_KEYS
    assert "icg_models_dir" in env.shared.restricted_opts
    assert labels["icg_models_dir"].component_args == {"visible": True}
    choices = labels["icg_default_model"].component_args()["choices"]
    assert choices[0] == env.files["clip_prefix_pt"]  # the default model setting comes first
    assert "sbg-tiny" in choices and "clip-prefix-flickr8k" in choices
    assert labels["icg_autocaption_model"].component_args()["choices"][0] == "default"


def test_option_settings_are_rendered_from_the_option_schema(webui_env):
    from icg.webui.settings import OPTION_SETTINGS, UNSET

    env = webui_env.start()
    labels = env.shared.opts.data_labels
    for name, option in OPTION_SETTINGS.items():
        info = labels[f"icg_{name}"]
        assert info.label.startswith(option.label), name
        args = info.component_args or {}
        if option.choices:
            assert [c for c in args["choices"] if c != "model default"] == list(option.choices), name
        elif "maximum" in args:
            assert args["maximum"] == option.maximum, name
            assert args["minimum"] == (0 if name in UNSET else option.minimum), name


def test_out_of_bounds_settings_fall_back_to_the_model_default(webui_env):
    env = webui_env.start()
    env.shared.opts.icg_num_candidates = 999  # an edited config.json
    env.shared.opts.icg_strategy = "beam"
    env.shared.opts.icg_num_beams = 3
    overrides = env.adapter.settings.Settings.read().decoding_overrides()
    assert "num_samples" not in overrides and overrides["num_beams"] == 3


@pytest.mark.parametrize("webui_env", [{"hide_ui_dir_config": True}], indirect=True)
def test_hide_ui_dir_config_hides_the_models_folder_setting(webui_env):
    env = webui_env.start()
    assert env.shared.opts.data_labels["icg_models_dir"].component_args == {"visible": False}


# ------------------------------------------------------------------------------------------ tab
def test_tab_builds_with_send_and_append_buttons(webui_env, manager):
    env = webui_env.start(manager)
    with gr.Blocks() as page:  # the WebUI builds txt2img and img2img before the extension tabs
        prompts = {}
        for elem_id in ("txt2img_prompt", "img2img_prompt"):
            prompts[elem_id] = gr.Textbox(elem_id=elem_id)
            env.callbacks.after_component_callback(prompts[elem_id], elem_id=elem_id)
    assert page is not None
    tabs = env.callbacks.ui_tabs_callback()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and title == "Image Caption" and elem_id == "icg"
    ids = [getattr(b, "elem_id", None) for b in blocks.blocks.values()]
    assert all(i.startswith("icg_") for i in ids if i), [i for i in ids if i and not i.startswith("icg_")]
    for expected in ("icg_image", "icg_caption_button", "icg_prompt", "icg_batch_folder", "icg_models_table"):
        assert expected in ids

    from modules import infotext_utils

    bindings = {b.tabname: b for b in infotext_utils.registered_param_bindings}
    assert set(bindings) == {"txt2img", "img2img", "inpaint"}
    prompt = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "icg_prompt")
    image = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "icg_image")
    assert all(b.source_text_component is prompt for b in bindings.values())
    assert bindings["txt2img"].source_image_component is None
    assert bindings["img2img"].source_image_component is image
    assert bindings["inpaint"].source_image_component is image
    assert all(b.paste_button.elem_id == f"icg_send_{t}" for t, b in bindings.items())

    append = [e for e in events(blocks) if prompts["txt2img_prompt"]._id in e[2]]
    assert len(append) == 1
    (_, inputs, outputs, js) = append[0]
    assert inputs == [prompts["txt2img_prompt"]._id, prompt._id] and "icgInsertAtCursor" in js


def test_tab_panels_drive_the_webui_service(webui_env, manager, tmp_path):
    """The panels' own controllers, as the page calls them, run as WebUI jobs with the settings."""
    env = webui_env.start(manager)
    parts = env.adapter.tab.build_tab()
    caption = parts.panels.caption
    values = [c.value for c in caption.decoding.inputs()] + [c.value for c in caption.prompt_inputs]
    image = Image.new("RGB", (40, 30), (10, 90, 160))
    text, info, candidates, keywords, prompt = caption.controller.caption_event(
        image, caption.model.value, *values
    )
    assert caption.model.value == env.files["clip_prefix_pt"]
    assert text and prompt and env.files["clip_prefix_pt"] in info
    assert env.shared.state.history == [("begin", "icg-caption"), ("end", "icg-caption")]

    from icg.batch.engine import BatchOptions

    folder = tmp_path / "photos"
    write_images(folder, 2)
    job = parts.panels.batch.controller.start(
        BatchOptions(root=folder, model=env.files["clip_prefix_pt"], decoding={"max_new_tokens": 3})
    )
    assert job.wait(120)
    snapshot = job.snapshot()
    assert snapshot["error"] is None and snapshot["summary"]["captioned"] == 2
    assert env.shared.state.history[-2:] == [("begin", "icg-batch"), ("end", "icg-batch")]
    assert (folder / "img0.txt").is_file() and (folder / "img1.txt").is_file()


def test_tab_defaults_follow_the_webui(webui_env, manager):
    env = webui_env.start(manager)
    env.shared.opts.outdir_samples = str(env.tmp / "my-outputs")
    parts = env.adapter.tab.build_tab()
    assert parts.panels.batch.folder.value == str(env.tmp / "my-outputs")
    assert parts.append_buttons == {}  # no prompt boxes were built: nothing to append to
    env.shared.opts.outdir_samples = ""
    webui_root = env.tmp / "webui" / "outputs"
    assert env.adapter.tab.default_output_folder() == str(webui_root)


def test_settings_reach_the_tab_after_the_first_start(webui_env, manager):
    """ui-config.json (the WebUI's ui_loadsave) must not pin the fields that follow the Settings."""
    from modules.ui_loadsave import UiLoadsave

    env = webui_env.start(manager)
    first = UiLoadsave()  # the first start: no ui-config.json yet, every other field is stored
    first.add_block(env.adapter.tab.build_tab().blocks, "icg")
    assert "icg/Dry run (write nothing)/value" in first.ui_settings

    env.shared.opts.icg_default_model = "sbg-tiny"
    env.shared.opts.icg_prefix = "masterpiece"
    env.shared.opts.icg_suffix = "lora:me"
    env.shared.opts.icg_strategy = "beam"
    env.shared.opts.icg_seed = 7
    env.shared.opts.outdir_samples = str(env.tmp / "new-outputs")
    parts = env.adapter.tab.build_tab()
    UiLoadsave(first.ui_settings).add_block(parts.blocks, "icg")  # a later start restores ui-config.json
    caption, batch = parts.panels.caption, parts.panels.batch
    assert caption.model.value == batch.model.value == "sbg-tiny"
    assert caption.prompt_options.prefix.value == batch.prefix.value == "masterpiece"
    assert caption.prompt_options.suffix.value == batch.suffix.value == "lora:me"
    assert caption.decoding.strategy.value == batch.decoding.strategy.value == "beam"
    assert str(caption.decoding.seed.value) == "7"
    assert batch.folder.value == str(env.tmp / "new-outputs")


@pytest.mark.parametrize("webui_env", [{"hide_ui_dir_config": True}], indirect=True)
def test_tab_under_hide_ui_dir_config_fixes_the_folders(webui_env, manager):
    env = webui_env.start(manager)
    parts = env.adapter.tab.build_tab()
    assert parts.panels.batch.folder.interactive is False
    assert parts.panels.batch.controller.defaults.allow_folders is False
    assert parts.models.import_path.interactive is False
    from icg.errors import ConfigError

    with pytest.raises(ConfigError, match="hide-ui-dir-config"):
        env.adapter.models_panel.import_files(env.service, env.files["sbg_generator_dir"], "x")


def test_append_prompt_keeps_what_is_there():
    from icg.webui.tab import append_prompt

    assert append_prompt("a castle, night", "a dog, night") == "a castle, night, a dog"
    assert append_prompt("", "a dog") == "a dog"
    assert append_prompt("a castle", "") == "a castle"


# ------------------------------------------------------------------------------------------ caption jobs
def test_caption_job_uses_state_device_and_offload(webui_env, manager, monkeypatch):
    env = webui_env.start(manager)
    from modules import devices, lowvram

    offloads = []
    monkeypatch.setattr(manager, "offload", lambda: offloads.append(1))
    image = Image.new("RGB", (40, 30), (20, 200, 20))
    result = env.service.caption(image, env.files["clip_prefix_pt"])
    assert result.caption and result.decoding["max_new_tokens"] == 4  # the setting applied
    assert env.shared.state.history == [("begin", "icg-caption"), ("end", "icg-caption")]
    assert offloads == [1] and devices.gc_calls >= 1
    assert lowvram.calls == 0  # not --lowvram: the WebUI's models stay where they are

    env.shared.opts.icg_keep_models_in_memory = True
    env.service.caption(image, env.files["clip_prefix_pt"], {"max_new_tokens": 3})
    assert offloads == [1]  # kept in memory


@pytest.mark.parametrize("webui_env", [{"lowvram": True}], indirect=True)
def test_lowvram_moves_the_webui_models_out_and_ours_after(webui_env, manager, monkeypatch):
    env = webui_env.start(manager)
    env.shared.opts.icg_keep_models_in_memory = True  # ignored under --lowvram
    from modules import lowvram

    offloads = []
    monkeypatch.setattr(manager, "offload", lambda: offloads.append(1))
    env.service.caption(Image.new("RGB", (32, 32)), env.files["clip_prefix_pt"])
    assert lowvram.calls == 1 and offloads == [1]


def test_failed_job_still_ends_the_state_job(webui_env, manager, monkeypatch):
    env = webui_env.start(manager)
    from icg.errors import IcgError

    def failing(*args, **kwargs):
        raise IcgError("the model failed")

    monkeypatch.setattr("icg.pipeline.caption_images", failing)  # a listed model, failing in the job
    with pytest.raises(IcgError, match="the model failed"):
        env.service.caption(Image.new("RGB", (32, 32)), env.files["clip_prefix_pt"])
    assert env.shared.state.history == [("begin", "icg-caption"), ("end", "icg-caption")]
    assert not env.service.lock.held_here


@pytest.mark.parametrize("webui_env", [{"no_half": True, "use_cpu": ["interrogate"]}], indirect=True)
def test_runtime_follows_the_flags(webui_env, files, models_dir, tmp_path):
    env = webui_env.start()
    runtime = env.adapter.service.runtime_config()
    assert runtime.device == "cpu" and runtime.dtype == "float32"
    assert runtime.models_dir == str(models_dir) and runtime.allow_download is False
    manager = make_manager(files, models_dir, dtype="auto")
    service = env.adapter.service.WebUIService(manager)
    env.adapter.service.refresh_manager(service)
    assert service.manager is not manager and service.manager.runtime.dtype == "float32"
    assert service.manager.runtime.clip == files["clip_dir"]  # the overrides carry over


def test_the_precision_setting_reaches_the_runtime(webui_env, caplog):
    env = webui_env.start()
    assert env.adapter.service.runtime_config().dtype == "auto"  # the WebUI's policy
    env.shared.opts.icg_dtype = "int8"
    assert env.adapter.service.runtime_config().dtype == "int8"
    env.shared.opts.icg_dtype = "int4"  # an edited config.json
    with caplog.at_level("WARNING", logger="icg"):
        assert env.adapter.service.runtime_config().dtype == "auto"
    assert "dtype must be one of auto, fp32, fp16, bf16, int8, int8-clip" in caplog.text


@pytest.mark.parametrize("webui_env", [{"no_half": True}], indirect=True)
def test_an_explicit_precision_wins_over_no_half(webui_env):
    env = webui_env.start()
    assert env.adapter.service.runtime_config().dtype == "float32"
    env.shared.opts.icg_dtype = "int8-clip"
    assert env.adapter.service.runtime_config().dtype == "int8-clip"


def test_a_cpu_job_leaves_a_core_to_the_webui_and_restores_the_threads(webui_env, manager):
    import torch

    env = webui_env.start(manager)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with env.service.job("caption", track_state=False):
            auto = torch.get_num_threads()
        env.shared.opts.icg_threads = 2
        with env.service.job("caption", track_state=False):
            chosen = torch.get_num_threads()
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert (auto, chosen, after) == (3, 2, 4)


def test_models_folder_precedence(webui_env, tmp_path):
    env = webui_env.start()
    env.shared.opts.icg_models_dir = str(tmp_path / "from-setting")
    assert str(env.adapter.service.models_root()) == env.shared.cmd_opts.icg_models_dir  # the flag wins
    env.shared.cmd_opts.icg_models_dir = None
    assert env.adapter.service.models_root() == tmp_path / "from-setting"
    env.shared.opts.icg_models_dir = ""
    assert env.adapter.service.models_root() == tmp_path / "webui" / "models" / "icg"


def test_batch_job_reports_progress_and_honours_interrupt(webui_env, manager, tmp_path):
    env = webui_env.start(manager)
    from icg.batch.engine import BatchOptions

    folder = tmp_path / "photos"
    write_images(folder, 3)
    options = BatchOptions(root=folder, model=env.files["clip_prefix_pt"], batch_size=1, decoding={})
    seen = []
    summary = env.service.run_batch(options, on_progress=lambda d, t, i: seen.append((d, t)))
    assert summary.captioned == 3 and seen[-1] == (3, 3)
    assert env.shared.state.history[-2:] == [("begin", "icg-batch"), ("end", "icg-batch")]
    assert env.shared.total_tqdm.updates == 3 and env.shared.total_tqdm.cleared == 1

    more = tmp_path / "more"
    write_images(more, 3)

    def interrupt_after_first(done, total, info):
        if done >= 1:
            env.shared.state.interrupt()

    options = BatchOptions(root=more, model=env.files["clip_prefix_pt"], batch_size=1)
    summary = env.service.run_batch(options, on_progress=interrupt_after_first)
    assert summary.stopped and summary.captioned == 1
    assert env.shared.state.job == ""  # the job ended


# ------------------------------------------------------------------------------------------ img2img
def _img2img_page(env, *, toolbar=True):
    from modules import scripts, ui_components

    runner = scripts.ScriptRunner([env.img2img_script.Img2ImgCaptionScript], is_img2img=True)
    made = {}
    with gr.Blocks() as page:
        made["prompt"] = gr.Textbox(elem_id="img2img_prompt")
        runner.after_component(made["prompt"], elem_id="img2img_prompt")
        with gr.Row(elem_id="img2img_tools") as tools:
            names = ("interrogate", "deepbooru") if toolbar else ("paste",)
            for name in names:
                made[name] = ui_components.ToolButton("?", elem_id=name)
                runner.after_component(made[name], elem_id=name)
        for elem_id in ("img2img_image", "img2img_sketch", "img2maskimg"):
            made[elem_id] = gr.Image(type="pil", elem_id=elem_id)
            runner.after_component(made[elem_id], elem_id=elem_id)
        runner.setup_ui()
    return page, tools, runner.alwayson_scripts[0], made


def test_img2img_button_sits_beside_the_interrogate_buttons(webui_env, manager):
    env = webui_env.start(manager)
    page, tools, script, made = _img2img_page(env)
    assert [c.elem_id for c in tools.children] == ["interrogate", "deepbooru", "icg_img2img_caption"]
    assert script.button is tools.children[-1] and script.wired
    (event,) = [e for e in events(page) if script.button._id in e[0]]
    _, inputs, outputs, js = event
    image_ids = [made[i]._id for i in ("img2img_image", "img2img_sketch", "img2maskimg")]
    assert inputs[1:] == [made["prompt"]._id, *image_ids] and outputs == [made["prompt"]._id]
    assert "mode_img2img" in js
    # the built-in buttons keep their own (absent here) wiring: nothing of ours is attached to them
    assert not [e for e in events(page) if made["interrogate"]._id in e[0] or made["deepbooru"]._id in e[0]]


def test_img2img_button_falls_back_to_an_accordion(webui_env, manager):
    env = webui_env.start(manager)
    page, tools, script, _ = _img2img_page(env, toolbar=False)
    assert [c.elem_id for c in tools.children] == ["paste"]
    assert script.button is not None and script.button.elem_id == "icg_img2img_caption" and script.wired
    assert [e for e in events(page) if script.button._id in e[0]]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("replace", "{c}"), ("append", "a castle, {c}"), ("prepend", "{c}, a castle")],
)
def test_img2img_caption_merges_into_the_prompt(webui_env, manager, mode, expected):
    env = webui_env.start(manager)
    env.shared.opts.icg_prompt_mode = mode
    env.shared.opts.icg_template = "{caption}"
    image = Image.new("RGB", (40, 30), (90, 90, 200))
    result = env.adapter.img2img.img2img_caption(0, "a castle", image, None, None)
    caption = env.service.caption(image, env.files["clip_prefix_pt"]).caption.rstrip(".")
    assert result == expected.format(c=caption)


def test_img2img_button_reads_forge_canvas_backgrounds(webui_env, manager):
    """Forge's ForgeCanvas gives the id to an HTML block and keeps the picture in a hidden component
    with the class "logical_image_background"."""
    env = webui_env.start(manager)
    from modules import scripts, ui_components

    runner = scripts.ScriptRunner([env.img2img_script.Img2ImgCaptionScript], is_img2img=True)
    with gr.Blocks() as page:
        prompt = gr.Textbox(elem_id="img2img_prompt")
        runner.after_component(prompt, elem_id="img2img_prompt")
        deepbooru = ui_components.ToolButton("?", elem_id="deepbooru")
        runner.after_component(deepbooru, elem_id="deepbooru")
        canvas = gr.HTML("<div></div>", elem_id="img2img_image")
        runner.after_component(canvas, elem_id="img2img_image")
        background = gr.Textbox(visible=False, elem_id="uuid_1", elem_classes=["logical_image_background"])
        runner.after_component(background, elem_id="uuid_1", elem_classes=["logical_image_background"])
        runner.setup_ui()
    script = runner.alwayson_scripts[0]
    (event,) = [e for e in events(page) if script.button._id in e[0]]
    assert event[1][1:] == [prompt._id, background._id]


def test_img2img_caption_picks_the_current_mode_image(webui_env):
    from icg.errors import ConfigError
    from icg.webui.img2img import img2img_caption, pick_image

    a, b = Image.new("RGB", (8, 8)), Image.new("RGB", (9, 9))
    assert pick_image(1, a, {"image": b, "mask": None}) is b
    assert pick_image(0, None, {"background": b, "layers": [], "composite": None}) is b
    assert pick_image("x", a, b) is a
    assert pick_image(2, None, None, None) is None
    assert pick_image(0, "<div>html</div>", b) is b
    import numpy as np

    assert pick_image(0, np.zeros((4, 5, 3), dtype=np.uint8)).size == (5, 4)
    with pytest.raises(ConfigError, match="no init image"):
        img2img_caption(0, "prompt", None, None)


# ------------------------------------------------------------------------------------------ API mount
def test_api_needs_the_api_flag(webui_env, manager):
    env = webui_env.start(manager)
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    assert not [r for r in app.routes if getattr(r, "path", "").startswith("/icg/")]


@pytest.mark.parametrize("webui_env", [{"api": True, "api_auth": "user:pass"}], indirect=True)
def test_api_mounted_with_the_webui_auth_and_lock(webui_env, manager):
    env = webui_env.start(manager)
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get("/icg/v1/models").status_code == 401
    assert client.get("/icg/v1/models", auth=("user", "nope")).status_code == 401
    models = client.get("/icg/v1/models", auth=("user", "pass"))
    assert models.status_code == 200 and models.json()["default"] == env.files["clip_prefix_pt"]
    response = client.post("/icg/v1/caption", json={"image": png_base64()}, auth=("user", "pass"))
    assert response.status_code == 200, response.text
    assert response.json()["decoding"]["max_new_tokens"] == 4  # the settings' decoding defaults
    assert env.shared.state.history == [("begin", "icg-caption"), ("end", "icg-caption")]
    from modules import call_queue

    assert not call_queue.queue_lock.locked()


@pytest.mark.parametrize("webui_env", [{"api": True}], indirect=True)
def test_an_api_caption_reads_the_settings_once(webui_env, manager, monkeypatch):
    env = webui_env.start(manager)
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    settings = env.adapter.settings.Settings
    reads = []
    original = settings.read.__func__
    monkeypatch.setattr(settings, "read", classmethod(lambda cls: reads.append(1) or original(cls)))
    response = TestClient(app).post("/icg/v1/caption", json={"image": png_base64()})
    assert response.status_code == 200, response.text
    assert len(reads) == 1


@pytest.mark.parametrize("webui_env", [{"api": True, "api_auth": "nocolon"}], indirect=True)
def test_malformed_api_auth_mounts_nothing(webui_env, manager):
    env = webui_env.start(manager)
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    assert TestClient(app).get("/icg/v1/models").status_code == 404


@pytest.mark.parametrize("webui_env", [{"api": True, "hide_ui_dir_config": True}], indirect=True)
def test_api_batch_refused_under_hide_ui_dir_config(webui_env, manager, tmp_path):
    env = webui_env.start(manager)
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    write_images(tmp_path, 1)
    response = TestClient(app).post("/icg/v1/batch", json={"folder": str(tmp_path)})
    assert response.status_code == 403


def test_api_queue_lock_waits_for_generation(webui_env, manager):
    """While the WebUI generates (holding queue_lock), an API caption waits, then runs."""
    import threading

    env = webui_env.start(manager)
    env.shared.cmd_opts.api = True
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    from modules import call_queue

    client = TestClient(app)
    results = []
    call_queue.queue_lock.acquire()
    worker = threading.Thread(
        target=lambda: results.append(client.post("/icg/v1/caption", json={"image": png_base64()}))
    )
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and not results  # blocked behind the "generation"
    call_queue.queue_lock.release()
    worker.join(120)
    assert results and results[0].status_code == 200


# ------------------------------------------------------------------------------------------ models panel
def test_models_panel_rows_download_and_unload(webui_env, manager):
    env = webui_env.start(manager)
    rows = {r[0].replace(" (default)", ""): r for r in env.adapter.models_panel.model_rows(env.service)}
    assert rows[env.files["clip_prefix_pt"]][2] == "yes"
    assert rows["sbg-tiny"][1] == "sbg" and rows["sbg-tiny"][2] == "yes"
    assert rows["clip-prefix-flickr8k"][2].startswith("no")
    from icg.errors import ConfigError

    with pytest.raises(ConfigError, match="offline"):
        env.adapter.models_panel.download_models(env.service, "clip-prefix-flickr8k")
    env.service.caption(Image.new("RGB", (32, 32)), env.files["clip_prefix_pt"])
    assert manager.loaded()["captioners"]
    env.service.unload()
    assert manager.loaded()["captioners"] == []


def test_a_first_use_download_runs_while_a_generation_holds_the_queue_lock(webui_env, manager, monkeypatch):
    """Fetching a model never waits for the WebUI's queue lock: only loading and captioning do."""
    import threading

    from modules import call_queue

    env = webui_env.start(manager)
    installing, finish_install = threading.Event(), threading.Event()
    seen = []

    def install_for_use(model):
        seen.append((model, call_queue.queue_lock.locked()))
        installing.set()
        assert finish_install.wait(60)

    monkeypatch.setattr(manager, "install_for_use", install_for_use)
    call_queue.queue_lock.acquire()  # a generation is running
    results = []
    image, model = Image.new("RGB", (32, 32)), env.files["clip_prefix_pt"]
    worker = threading.Thread(target=lambda: results.append(env.service.caption(image, model)))
    try:
        worker.start()
        assert installing.wait(60)  # the download started although the generation holds the lock
        assert seen == [(env.files["clip_prefix_pt"], True)]
        finish_install.set()
    finally:
        call_queue.queue_lock.release()  # the generation ends; the caption job takes the lock
    worker.join(120)
    assert results and results[0].caption


def test_the_download_button_installs_explicitly(webui_env, manager, monkeypatch):
    """No WebUI lock, and ``explicit``: hosts remembered as unreachable are tried again."""
    env = webui_env.start(manager)
    env.shared.cmd_opts.icg_offline = False
    monkeypatch.delenv("ICG_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(manager, "install", lambda model, progress=None, **kw: calls.append((model, kw)))
    message = env.adapter.models_panel.download_models(env.service, "clip-prefix-flickr8k")
    assert calls == [("clip-prefix-flickr8k", {"explicit": True})]
    assert "clip-prefix-flickr8k: installed" in message


# ------------------------------------------------------------------------------------------ auto-caption
def _save(env, folder, name="00001-123.png"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", (40, 40), (250, 200, 0)).save(path)
    params = env.callbacks.ImageSaveParams(Image.open(path), None, str(path), {"parameters": "x"})
    env.callbacks.image_saved_callback(params)
    return path


def test_autocaption_is_off_by_default(webui_env, manager, tmp_path):
    env = webui_env.start(manager)
    path = _save(env, tmp_path / "out")
    assert env.adapter.autocaption._AUTOCAPTIONER is None or env.adapter.autocaption.autocaptioner().join(60)
    assert not path.with_suffix(".txt").exists()


def test_autocaption_writes_a_sidecar_in_the_background(webui_env, manager, tmp_path):
    env = webui_env.start(manager)
    env.shared.opts.icg_autocaption = True
    env.shared.opts.icg_sidecar_extension = ".caption"
    env.shared.opts.icg_template = "{caption}"
    from modules import call_queue

    call_queue.queue_lock.acquire()  # the generation that saved the image still runs
    paths = [_save(env, tmp_path / "out", f"0000{i}-1.png") for i in range(3)]
    grid = _save(env, tmp_path / "out", "grid-0001.png")
    worker = env.adapter.autocaption.autocaptioner()
    # The callbacks returned; the captions wait (as jobs of the process's registry) for the generation.
    assert not worker.join(0)
    assert not any(p.with_suffix(".caption").exists() for p in paths)
    from icg.jobs import registry

    waiting = worker.jobs()
    assert waiting and all(job.kind == "autocaption" and not job.finished for job in waiting)
    assert all(registry().get(job.id) is job for job in waiting)
    call_queue.queue_lock.release()
    assert worker.join(120)
    for path in paths:
        assert path.with_suffix(".caption").read_text(encoding="utf-8").strip()
    summaries = [job.snapshot()["summary"] for job in worker.jobs()]
    assert sum(s["written"] for s in summaries) == 3 and sum(s["failed"] for s in summaries) == 0
    rows = [row for job in worker.jobs() for row in job.snapshot(results=True)["results"]]
    assert sorted(row["key"] for row in rows) == sorted(str(p) for p in paths)
    assert not grid.with_suffix(".caption").exists()
    assert env.shared.state.history == []  # no shared.state job: it must not disturb the next generation


def test_autocaption_never_touches_the_webui_parameter_files(webui_env, manager, tmp_path):
    env = webui_env.start(manager)
    env.shared.opts.icg_autocaption = True
    env.shared.opts.add_option("save_txt", env.shared.OptionInfo(True, "save_txt"))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "00002-5.txt").write_text("Steps: 20\n", encoding="utf-8")
    _save(env, folder, "00002-5.png")
    assert env.adapter.autocaption.autocaptioner().join(60)
    assert (folder / "00002-5.txt").read_text(encoding="utf-8") == "Steps: 20\n"


# ------------------------------------------------------------------------------------------ issue 11
def handler(blocks, trigger, output=None):
    """The function ``blocks`` runs when ``trigger`` fires (and updates ``output``)."""
    fns = list(blocks.fns.values()) if isinstance(blocks.fns, dict) else list(blocks.fns)
    for (targets, _, outputs, _), fn in zip(events(blocks), fns):
        if trigger._id in targets and (output is None or output._id in outputs):
            return fn.fn
    raise AssertionError(f"no event of {trigger} updates {output}")


def by_id(blocks, elem_id):
    return next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)


@pytest.fixture
def own_models(files, tmp_path):
    """A service over a models folder of this test's own (the test adds models to it)."""
    manager = make_manager(files, models_folder(tmp_path / "models", files))
    yield manager
    manager.unload()


def test_models_panel_opens_filled_and_imports_a_file(webui_env, own_models):
    env = webui_env.start(own_models)
    parts = env.adapter.tab.build_tab()
    models = parts.models
    assert "sbg-tiny" in str(models.table.value)  # filled on load, no Refresh needed
    assert "icg_import.py" in str(by_id(parts.blocks, "icg_models_help").value)

    on_import = handler(parts.blocks, models.import_button, models.status)
    as_the_files_say = (models.import_clip.value, models.import_normalize.value)  # the controls' values
    assert as_the_files_say == ("", AS_THE_FILES_SAY)
    assert "Import: give the path" in shown_error(on_import, "", "my-prefix", *as_the_files_say)
    missing = str(env.tmp / "nothing.pt")
    assert "no such file or folder" in shown_error(on_import, missing, "my-prefix", *as_the_files_say)
    status, table_value, choices = on_import(env.files["sbg_generator_dir"], "my-prefix", *as_the_files_say)
    assert status.startswith("imported my-prefix (sbg)")
    assert (own_models.models_dir / "my-prefix").is_dir()
    assert "my-prefix" in str(table_value) and "my-prefix" in choices["choices"]

    # the Caption and Batch dropdowns list it when their tab is opened again
    caption_tab, batch_tab, models_tab = (
        by_id(parts.blocks, f"icg_tab_{t}") for t in ("caption", "batch", "models")
    )
    for tab, dropdown in ((caption_tab, parts.panels.caption.model), (batch_tab, parts.panels.batch.model)):
        update = handler(parts.blocks, tab, dropdown)(dropdown.value)
        assert "my-prefix" in update["choices"] and dropdown.value in update["choices"]
    table_value, update = handler(parts.blocks, models_tab, models.table)()
    assert "my-prefix" in str(table_value) and "my-prefix" in update["choices"]


def test_the_printed_import_command_works_from_another_folder(files, tmp_path, monkeypatch):
    """The command the WebUI prints runs as printed: no ``icg`` on the path, the models folder given."""
    import os
    import shlex
    import subprocess
    import sys

    from icg.webui import launcher

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "webui" / "models" / "icg"
    source = f"{files['clip_prefix_pt']} --clip {files['clip_dir']}"
    command = launcher.import_command("printed", target, source=source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (target / "printed").is_dir() and "imported printed" in done.stdout
    assert sys.executable in command or os.path.relpath(sys.executable) in command


def test_the_launcher_defaults_to_the_webui_models_folder(files, tmp_path, capsys):
    from icg.webui import launcher

    extension = tmp_path / "webui" / "extensions" / "ICG_sd_extension"
    extension.mkdir(parents=True)
    assert launcher.default_models_dir(extension) == (tmp_path / "webui" / "models" / "icg").resolve()
    assert launcher.default_models_dir(tmp_path) is None
    assert launcher.import_main([files["sbg_generator_dir"], "--as", "from-launcher"], extension) == 0
    assert (tmp_path / "webui" / "models" / "icg" / "from-launcher").is_dir()


def test_webui_messages_name_the_webui_command_and_wrap_urls(webui_env, manager):
    """A missing model's instructions: the command that works from the WebUI, each URL on its own line."""
    from icg.models.download import manual_instructions
    from icg.models.registry import load_registry
    from icg.webui.launcher import URL, webui_message

    env = webui_env.start(manager)
    entry = load_registry()["clip-prefix-flickr8k"]
    raw = manual_instructions(entry, manager.models_dir)
    text = webui_message(raw, manager.models_dir)
    assert "python -m icg import" not in text
    assert f"icg_import.py --models-dir {manager.models_dir} FILE --as clip-prefix-flickr8k" in text
    url_lines = [line for line in text.splitlines() if URL.search(line)]
    assert url_lines and all(line.strip() == URL.search(line).group(0) for line in url_lines)
    assert {line.strip() for line in url_lines} == set(URL.findall(raw))
    assert text.split() == " ".join(text.split()).split()  # same words, only the line breaks moved
    with pytest.raises(Exception) as caught:
        env.service.caption(Image.new("RGB", (32, 32)), "clip-prefix-flickr8k")
    assert "icg_import.py --models-dir" in str(caught.value) and "python -m icg" not in str(caught.value)
    assert "Download button of Image Caption > Models (model clip-prefix-flickr8k)" in str(caught.value)


def test_expected_errors_log_one_line_without_a_traceback(webui_env, manager, caplog):
    import logging

    env = webui_env.start(manager)
    caption = env.adapter.tab.build_tab().panels.caption
    values = [c.value for c in caption.decoding.inputs()] + [c.value for c in caption.prompt_inputs]
    with caplog.at_level(logging.WARNING, logger="icg"):
        assert "no image" in shown_error(caption.controller.caption_event, None, caption.model.value, *values)
    records = [r for r in caplog.records if "no image" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()


@pytest.mark.parametrize("button", ["interrupt", "skip"])
def test_interrupt_and_skip_stop_a_tab_batch(webui_env, manager, tmp_path, monkeypatch, button):
    """The WebUI's Interrupt and Skip buttons (shared.state) stop a batch started in the tab."""
    env = webui_env.start(manager)
    from icg.batch.engine import BatchOptions

    folder = tmp_path / "photos"
    write_images(folder, 4)
    press = getattr(env.shared.state, button)
    counted = env.shared.total_tqdm.update

    def first_image_then_press():  # the user presses the button once the first image is done
        counted()
        press()

    monkeypatch.setattr(env.shared.total_tqdm, "update", first_image_then_press)
    controller = env.adapter.tab.build_tab().panels.batch.controller
    job = controller.start(BatchOptions(root=folder, model=env.files["clip_prefix_pt"], batch_size=1))
    assert job.wait(120)
    summary = job.snapshot()["summary"]
    assert summary["stopped"] and summary["captioned"] == 1
    assert sorted(p.name for p in folder.glob("*.txt")) == ["img0.txt"]
    assert env.shared.state.history[-1] == ("end", "icg-batch")


# ------------------------------------------------------------------------------------------ issue 11, rest
def _gradio_major() -> int:
    return int(gr.__version__.split(".")[0])


@pytest.mark.parametrize("host_gradio", ["plain", "forge"])
def test_append_buttons_switch_to_their_tab(webui_env, manager, monkeypatch, host_gradio):
    """Item 18: each Append button fills its prompt box and switches to its tab (the WebUI's own
    ``switch_to_txt2img``/``switch_to_img2img`` of javascript/ui.js), on A1111 and under Forge, whose
    ``EventWrapper`` around every listener hid the ``js`` argument (all ICG JavaScript was dropped)."""
    env = webui_env.start(manager)
    if host_gradio == "forge":
        if _gradio_major() < 4:
            pytest.skip("Forge runs gradio 4")
        from modules.gradio_extensions import EventWrapper, repaired_init

        monkeypatch.setattr(gr.Button, "__init__", repaired_init(gr.Button))
    with gr.Blocks():
        prompts = {}
        for elem_id in ("txt2img_prompt", "img2img_prompt"):
            prompts[elem_id] = gr.Textbox(elem_id=elem_id)
            env.callbacks.after_component_callback(prompts[elem_id], elem_id=elem_id)
    parts = env.adapter.tab.build_tab()
    for tab in ("txt2img", "img2img"):
        button = parts.append_buttons[tab]
        if host_gradio == "forge":
            assert isinstance(button.click, EventWrapper)
            assert env.adapter.host.js_kwargs(button.click, "f") == {"js": "f"}  # the img2img button's too
        scripts = [e[3] or "" for e in events(parts.blocks) if button._id in e[0]]
        assert any("icgInsertAtCursor" in js for js in scripts), scripts
        switch = [js for js in scripts if f"switch_to_{tab}" in js]
        assert len(switch) == 1 and f"switch_to_{tab}()" in switch[0]


def test_the_tab_loads_only_listed_models(webui_env, manager, tmp_path):
    """Item 12 in the WebUI: the tab's model box takes typed text, but only listed models are loaded
    (the check of the API and the app, ``CaptionService.checked_model``), before anything is fetched."""
    from icg.batch.engine import BatchOptions
    from icg.errors import ModelNotFound

    env = webui_env.start(manager)
    manager.unload()
    typed = env.files["sbg_generator_dir"]  # a real model folder, but not one the WebUI lists
    assert typed not in env.service.model_choices()
    parts = env.adapter.tab.build_tab()
    assert parts.panels.caption.model.label == "Model"  # no longer invites a path
    caption = parts.panels.caption
    values = [c.value for c in caption.decoding.inputs()] + [c.value for c in caption.prompt_inputs]
    image = Image.new("RGB", (40, 30), (10, 90, 160))
    shown = shown_error(caption.controller.caption_event, image, typed, *values)
    assert re.search("unknown model.*import it in Image Caption > Models", shown)
    with pytest.raises(ModelNotFound, match="unknown model"):
        env.service.caption_keywords(["dog"], typed)
    folder = tmp_path / "photos"
    write_images(folder, 1)
    job = parts.panels.batch.controller.start(BatchOptions(root=folder, model=typed))
    assert job.wait(120)
    assert "unknown model" in job.snapshot()["error"] and not (folder / "img0.txt").exists()
    assert manager.loaded()["captioners"] == []
    assert env.shared.state.history == []  # refused before any WebUI job began


@pytest.mark.parametrize("webui_env", [{"api": True}], indirect=True)
def test_the_api_pixel_cap_is_a_setting_read_per_request(webui_env, manager, caplog):
    """Item 10: the API's cap on an image's pixels is the setting ``icg_upload_max_megapixels`` (rendered
    from ``icg.options.UPLOAD_MAX_MEGAPIXELS``, whose default is the API's own), read on each request."""
    import logging

    from icg.api import UPLOAD_MAX_PIXELS
    from icg.options import UPLOAD_MAX_MEGAPIXELS

    env = webui_env.start(manager)
    info = env.shared.opts.data_labels["icg_upload_max_megapixels"]
    assert info.default == UPLOAD_MAX_MEGAPIXELS.default and info.default * 1_000_000 == UPLOAD_MAX_PIXELS
    assert (info.component_args["minimum"], info.component_args["maximum"]) == (1, 178)
    from icg.imaging import DEFAULT_MAX_PIXELS

    assert UPLOAD_MAX_MEGAPIXELS.maximum * 1_000_000 <= DEFAULT_MAX_PIXELS  # below the batch limit
    app = FastAPI()
    env.callbacks.app_started_callback(None, app)
    client = TestClient(app)
    image = png_base64((1200, 1000))  # 1.2 megapixels
    env.shared.opts.icg_upload_max_megapixels = 1
    response = client.post("/icg/v1/caption", json={"image": image})
    assert response.status_code == 413 and "limit 1000000" in response.json()["detail"]
    env.shared.opts.icg_upload_max_megapixels = 2  # no restart: the next request reads it
    assert client.post("/icg/v1/caption", json={"image": image}).status_code == 200
    env.shared.opts.icg_upload_max_megapixels = 0  # an edited config.json: the default, with a warning
    with caplog.at_level(logging.WARNING, logger="icg"):
        assert client.post("/icg/v1/caption", json={"image": image}).status_code == 200
    assert any("icg_upload_max_megapixels" in r.getMessage() for r in caplog.records)


def _upload_as(tmp_path, source, shape):
    """``source`` as a ``gr.File`` passes an upload: gradio 3.41 a temporary file object (a random path,
    the user's name in ``orig_name``), gradio 4+ the path (a folder of its own, the user's name)."""
    import shutil
    import types
    import uuid

    source = Path(source)
    folder = tmp_path / "gradio" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    if shape == "gradio3":
        path = folder / f"tmp{uuid.uuid4().hex[:8]}"
        shutil.copyfile(source, path)
        return types.SimpleNamespace(name=str(path), orig_name=source.name)
    path = folder / source.name
    shutil.copyfile(source, path)
    return str(path)


def test_models_panel_imports_an_upload(webui_env, own_models, tmp_path, monkeypatch):
    """Item 16: an upload (gr.File) is imported through the same importer as ``icg import``; type, size
    and name problems are one line each, and an existing model is never replaced."""
    env = webui_env.start(own_models)
    parts = env.adapter.tab.build_tab()
    models = parts.models
    panel = env.adapter.models_panel
    assert models.upload.elem_id == "icg_models_upload" and ".safetensors" in models.upload.file_types
    on_upload = handler(parts.blocks, models.upload_button, models.status)
    generator = sorted(Path(env.files["sbg_generator_dir"]).iterdir())
    uploads = [_upload_as(tmp_path, p, "gradio3") for p in generator]
    status, table_value, choices = on_upload(uploads, "up-sbg", "", AS_THE_FILES_SAY)
    assert status.startswith("imported up-sbg (sbg)")
    assert "up-sbg" in str(table_value) and "up-sbg" in choices["choices"]
    installed = own_models.models_dir / "up-sbg"
    before = {p.name: p.stat().st_mtime_ns for p in installed.iterdir()}

    again = [_upload_as(tmp_path, p, "gradio4") for p in generator]
    refused = shown_error(on_upload, again, "up-sbg", "", AS_THE_FILES_SAY)
    assert re.search("up-sbg already exists .*nothing was replaced", refused)
    assert {p.name: p.stat().st_mtime_ns for p in installed.iterdir()} == before
    labels = [_upload_as(tmp_path, env.files[k], "gradio4") for k in ("all_labels_pkl", "encyclopedia_pkl")]
    status = on_upload(labels, "up-vocab", "", AS_THE_FILES_SAY)[0]
    assert status.startswith("imported up-vocab (sbg-vocabulary)")

    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.pt").write_bytes(b"")
    for value, message in (
        (None, "choose the file"),
        ([_upload_as(tmp_path, tmp_path / "photo.png", "gradio4")], "photo.png: not a model file"),
        ([_upload_as(tmp_path, tmp_path / "empty.pt", "gradio3")], "empty.pt: the upload is empty"),
        (again[:1] * 2, "two uploaded files have the same name"),
        (again, "give the model id"),
    ):
        model_id = "" if message == "give the model id" else "other"
        assert message in shown_error(on_upload, value, model_id, "", AS_THE_FILES_SAY)
    monkeypatch.setattr(panel, "MAX_UPLOAD_BYTES", 10)
    assert "more than an upload may hold" in shown_error(on_upload, again, "other", "", AS_THE_FILES_SAY)
    assert not (own_models.models_dir / "other").exists()


def test_import_rows_take_the_clip_and_normalisation_it_was_trained_with(webui_env, own_models, tmp_path):
    """A ClipCap checkpoint on another CLIP than ViT-L/14 (the original ones: ViT-B/32, raw features)
    imports from the panel, as ``icg import --clip ... --no-normalize`` does; the rows render
    ``icg.options.IMPORT``."""
    import json

    env = webui_env.start(own_models)
    parts = env.adapter.tab.build_tab()
    models = parts.models
    assert models.import_clip.label == IMPORT["clip"].label
    normalize_choices = [c[0] if isinstance(c, (list, tuple)) else c for c in models.import_normalize.choices]
    assert normalize_choices == [AS_THE_FILES_SAY, "yes", "no"]
    on_upload = handler(parts.blocks, models.upload_button, models.status)
    on_import = handler(parts.blocks, models.import_button, models.status)
    checkpoint = _upload_as(tmp_path, env.files["clip_prefix_pt"], "gradio4")
    refused = shown_error(on_upload, [checkpoint], "cap", "", AS_THE_FILES_SAY)  # a 32-dim mapper input
    assert refused.startswith(f"{Path(env.files['clip_prefix_pt']).name}: the mapper takes 32-dim CLIP")
    assert f'"{IMPORT["clip"].label}"' in refused and "--clip" not in refused  # the row's words
    assert "normalize must be true or false" in shown_error(
        on_upload, [checkpoint], "cap", env.files["clip_dir"], "maybe"
    )
    assert not (own_models.models_dir / "cap").exists()

    status = on_upload([checkpoint], "cap", env.files["clip_dir"], "no")[0]
    assert status.startswith("imported cap (clip-prefix)")
    config = json.loads((own_models.models_dir / "cap" / "config.json").read_text())
    assert config["normalize"] is False and config["clip"]["arch"] == "icg-tiny-clip"
    status = on_import(env.files["clip_prefix_pt"], "cap2", f"  {env.files['clip_dir']} ", "yes")[0]
    config = json.loads((own_models.models_dir / "cap2" / "config.json").read_text())
    assert status.startswith("imported cap2") and config["normalize"] is True


def test_import_messages_speak_of_the_rows_fields_and_the_uploaded_files_names(tmp_path):
    from icg.webui.models_panel import in_panel_words

    clip, normalize = (f'"{IMPORT[name].label}"' for name in ("clip", "normalize"))
    staging = tmp_path / "upload"
    said = f"{staging / 'a.pt'}: give --clip X (with --no-normalize; or --normalize); nothing in {staging}"
    assert in_panel_words(said, staging) == (
        f"a.pt: give {clip} X (with {normalize}: no; or {normalize}: yes); nothing in the upload"
    )


@pytest.mark.parametrize("webui_env", [{"hide_ui_dir_config": True}], indirect=True)
def test_import_rows_name_no_clip_folder_under_hide_ui_dir_config(webui_env, own_models, tmp_path):
    env = webui_env.start(own_models)
    panel = env.adapter.models_panel
    checkpoint = _upload_as(tmp_path, env.files["clip_prefix_pt"], "gradio4")
    from icg.errors import ConfigError

    with pytest.raises(ConfigError, match="CLIP folders on the server cannot be named"):
        panel.import_uploads(env.service, [checkpoint], "cap", env.files["clip_dir"], AS_THE_FILES_SAY)
    assert panel.import_options("ViT-B-32/openai", "no") == {"clip": "ViT-B-32/openai", "normalize": False}
    assert not (own_models.models_dir / "cap").exists()


def test_model_lists_follow_the_models_folder(webui_env, own_models, files):
    """Item 17: a model added while the WebUI runs appears in the model dropdowns: each checks the
    models folder's signature (one directory scan) when it gets the focus, and lists afresh when it
    changed."""
    import shutil

    env = webui_env.start(own_models)
    parts = env.adapter.tab.build_tab()
    watched = {}
    for dropdown in (parts.panels.caption.model, parts.panels.batch.model, parts.models.model):
        focus = handler(parts.blocks, dropdown, dropdown)
        event = next(e for e in events(parts.blocks) if dropdown._id in e[0] and dropdown._id in e[2])
        state = parts.blocks.blocks[event[1][1]]
        update, seen = focus(dropdown.value, state.value)
        assert "choices" not in update and seen == state.value  # nothing changed: nothing re-listed
        watched[dropdown.elem_id] = (dropdown, focus, seen)
    shutil.copytree(files["sbg_generator_dir"], own_models.models_dir / "added-later")
    for dropdown, focus, seen in watched.values():
        update, now = focus(dropdown.value, seen)
        assert "added-later" in update["choices"] and dropdown.value in update["choices"] and now != seen
        assert "choices" not in focus(dropdown.value, now)[0]


def test_every_model_setting_can_list_the_models_afresh(webui_env):
    """The settings' model dropdowns have the WebUI's refresh button (a model imported since)."""
    env = webui_env.start()
    labels = env.shared.opts.data_labels
    for key in ("icg_default_model", "icg_img2img_model", "icg_autocaption_model"):
        assert labels[key].refresh is env.adapter.settings.model_choices, key
