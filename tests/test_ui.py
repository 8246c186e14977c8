"""The UI module: the panels build under the installed gradio (3.41 in the host set, current in the latest
set), every component is found by its ``icg_`` elem_id, and the handlers behind the buttons caption,
compose, regenerate from keywords and run folder batches with the tiny fixture models."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from icg.errors import ConfigError  # noqa: E402
from icg.jobs import DONE, QUEUED, JobRegistry  # noqa: E402
from icg.models.manager import ModelManager, RuntimeConfig  # noqa: E402
from icg.options import BATCH, CAPTION, DECODING, TEMPLATE  # noqa: E402
from icg.prompt import PromptTemplate  # noqa: E402
from icg.ui import CaptionService, UiDefaults, build_app  # noqa: E402
from icg.ui.compat import copy_button_kwargs  # noqa: E402
from icg.ui.handlers import (  # noqa: E402
    CANDIDATE_HEADERS,
    JOB_HEADERS,
    MAX_SEED,
    MODEL_DEFAULT,
    PREVIEW_HEADERS,
    RESULT_HEADERS,
    BatchController,
    BatchInputs,
    DecodingInputs,
    PromptInputs,
    describe,
    stream_job,
)
from tests.gradio_errors import shown_error  # noqa: E402

REQUIRED_IDS = {
    "icg_image",
    "icg_model",
    "icg_strategy",
    "icg_num_beams",
    "icg_temperature",
    "icg_top_k",
    "icg_top_p",
    "icg_max_new_tokens",
    "icg_seed",
    "icg_num_samples",
    "icg_repetition_penalty",
    "icg_no_repeat_ngram_size",
    "icg_length_penalty",
    "icg_style",
    "icg_caption_button",
    "icg_caption",
    "icg_caption_info",
    "icg_candidates",
    "icg_keywords",
    "icg_regenerate_button",
    "icg_template",
    "icg_prefix",
    "icg_suffix",
    "icg_prompt",
    "icg_batch_folder",
    "icg_batch_model",
    "icg_batch_policy",
    "icg_batch_sidecar_extension",
    "icg_batch_output_dir",
    "icg_batch_manifest",
    "icg_batch_dry_run",
    "icg_batch_start",
    "icg_batch_stop",
    "icg_batch_progress",
    "icg_batch_results",
    "icg_jobs_table",
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(fixture_files, tmp_path_factory) -> dict[str, str]:
    """The fixture models, and a models folder where the tiny SBG vocabulary is installed (as the
    registry's ``sbg-vocabulary``, which an SBG model uses unless it names another)."""
    from icg.sbg.vocab import convert_pickles

    models_dir = tmp_path_factory.mktemp("ui-models") / "models-folder"
    (models_dir / "sbg-vocabulary").mkdir(parents=True)
    convert_pickles(
        fixture_files["all_labels_pkl"],
        fixture_files["encyclopedia_pkl"],
        models_dir / "sbg-vocabulary" / "vocabulary.json",
    )
    return {
        **fixture_files,
        "sbg": fixture_files["sbg_generator_dir"],
        "prefix": fixture_files["clip_prefix_pt"],
        "models_dir": str(models_dir),
    }


@pytest.fixture(scope="module")
def manager(models) -> ModelManager:
    return ModelManager(
        RuntimeConfig(
            device="cpu",
            models_dir=models["models_dir"],
            clip=models["clip_dir"],
            tokenizer=models["tokenizer_dir"],
        )
    )


@pytest.fixture(scope="module")
def service(manager, models) -> CaptionService:
    return CaptionService(manager, models=[models["prefix"], models["sbg"]])


@pytest.fixture(scope="module")
def app(service):
    return build_app(service)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def by_elem_id(demo) -> dict[str, object]:
    found: dict[str, object] = {}
    for block in demo.blocks.values():
        elem_id = getattr(block, "elem_id", None)
        if elem_id:
            assert elem_id not in found, f"duplicate elem_id {elem_id}"
            found[elem_id] = block
    return found


def fill_folder(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def strings(decoding: DecodingInputs) -> list:
    return decoding.flat()


# ------------------------------------------------------------------------------------------ building
def test_panels_build_with_icg_elem_ids(app):
    demo, panels = app
    ids = by_elem_id(demo)
    assert REQUIRED_IDS - set(ids) == set()
    assert all(elem_id.startswith("icg_") for elem_id in ids)
    # The dataclass hands out the very components the page holds (what a host's Send-to buttons need).
    assert ids["icg_caption_button"] is panels.caption.caption_button
    assert ids["icg_prompt"] is panels.caption.prompt
    assert ids["icg_image"] is panels.caption.image
    assert ids["icg_batch_start"] is panels.batch.start_button
    assert panels.caption.image.type == "pil"
    assert isinstance(panels.caption.candidates, gr.Dataframe)


def test_prompt_and_caption_have_a_copy_button(app):
    _, panels = app
    kwargs = copy_button_kwargs()
    assert kwargs, "every supported gradio has a copy button on text boxes"
    for box in (panels.caption.prompt, panels.caption.caption):
        if "show_copy_button" in kwargs:
            assert box.show_copy_button is True
        else:
            assert "copy" in box.buttons


def test_model_lists_offer_given_models_registry_and_imported_folders(manager, models, tmp_path):
    folder = Path(manager.models_dir) / "my-imported-sbg"
    shutil.copytree(models["sbg"], folder, dirs_exist_ok=True)
    service = CaptionService(manager, models=[models["prefix"]])
    choices = service.model_choices()
    assert choices[0] == models["prefix"] == service.default_model()
    assert {"clip-prefix-flickr8k", "sbg-flickr8k"} <= set(choices)
    assert "my-imported-sbg" in choices
    assert len(choices) == len(set(choices))
    demo, panels = build_app(service)
    assert panels.caption.model.value == models["prefix"]


def test_defaults_fill_the_panels(service):
    defaults = UiDefaults(
        model="sbg-flickr8k", num_samples=7, seed=42, template="{caption}", batch_folder="/data/in"
    )
    demo, panels = build_app(service, defaults)
    assert panels.caption.model.value == "sbg-flickr8k"
    assert panels.caption.decoding.num_samples.value == "7"
    assert panels.caption.decoding.seed.value == "42"
    assert panels.caption.decoding.top_k.value == ""
    assert panels.caption.template.value == "{caption}"
    assert panels.batch.folder.value == "/data/in"
    assert panels.batch.folder.interactive is not False


# ------------------------------------------------------------------------------------------ decoding
def test_decoding_inputs_turn_into_overrides():
    assert DecodingInputs(seed="").overrides() == {}
    given = DecodingInputs(
        strategy="beam",
        num_beams="3",
        temperature=" 0.7 ",
        top_k="0",
        top_p="0.9",
        max_new_tokens="12",
        seed="5",
        num_samples="4",
        repetition_penalty="1.2",
        no_repeat_ngram_size=3.0,
        length_penalty="",
    ).overrides()
    assert given == {
        "strategy": "beam",
        "num_beams": 3,
        "temperature": 0.7,
        "top_k": 0,
        "top_p": 0.9,
        "max_new_tokens": 12,
        "seed": 5,
        "num_samples": 4,
        "repetition_penalty": 1.2,
        "no_repeat_ngram_size": 3,
    }
    drawn = DecodingInputs(strategy=MODEL_DEFAULT, seed=-1).overrides()
    assert set(drawn) == {"seed"} and 0 <= drawn["seed"] <= MAX_SEED
    assert DecodingInputs(seed="-1").overrides(draw_seed=False) == {}
    with pytest.raises(ConfigError, match="beams must be a whole number"):
        DecodingInputs(num_beams="2.5").overrides()
    with pytest.raises(ConfigError, match="temperature must be a number"):
        DecodingInputs(temperature="hot").overrides()
    with pytest.raises(ConfigError, match="num_beams must be 1 to 16"):
        DecodingInputs(num_beams="17").overrides()
    with pytest.raises(ConfigError, match="style must be one of clean, published"):
        DecodingInputs(style="fancy").caption_options()
    assert DecodingInputs(style="published").caption_options().style == "published"
    assert DecodingInputs(style=MODEL_DEFAULT).caption_options().style is None


# ------------------------------------------------------------------------------------------ caption
def test_caption_button_returns_caption_details_and_prompt(app, models, image):
    _, panels = app
    controller = panels.caption.controller
    prompt = PromptInputs(template="{prefix}, {caption}", prefix="lora:x")
    out = controller.caption_event(image, models["prefix"], *strings(DecodingInputs()), *prompt.flat())
    caption, info, candidates, keywords, prompt = out
    assert isinstance(caption, str) and caption.strip()
    assert info.startswith(models["prefix"]) and "greedy" in info
    assert candidates == {"headers": CANDIDATE_HEADERS, "data": []}  # greedy: one caption
    assert keywords == ""
    assert prompt == PromptTemplate("{prefix}, {caption}", prefix="lora:x").compose(caption)
    assert prompt.startswith("lora:x, ")


def test_beam_search_fills_the_candidates_table(app, models, image):
    _, panels = app
    decoding = DecodingInputs(strategy="beam", num_beams="3", max_new_tokens="6")
    out = panels.caption.controller.caption(image, models["prefix"], decoding, PromptInputs())
    rows = out.candidates["data"]
    assert out.candidates["headers"] == CANDIDATE_HEADERS
    assert [row[0] for row in rows] == [1, 2, 3]
    scores = [row[2] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0][1] == out.caption
    assert "3 beams" in out.info


def test_a_seed_reproduces_a_sampled_caption(app, models, image):
    _, panels = app
    decoding = DecodingInputs(strategy="sample", top_k="20", max_new_tokens="8", seed="123")
    first = panels.caption.controller.caption(image, models["prefix"], decoding, PromptInputs())
    again = panels.caption.controller.caption(image, models["prefix"], decoding, PromptInputs())
    assert first.caption == again.caption
    assert "seed 123" in first.info


def test_sbg_caption_shows_keywords_and_regenerate_uses_the_edited_ones(app, models, image):
    _, panels = app
    controller = panels.caption.controller
    decoding = DecodingInputs(num_samples="3", max_new_tokens="8", seed="7")
    first = controller.caption(image, models["sbg"], decoding, PromptInputs(template="{caption}, {keywords}"))
    assert first.caption.strip()
    assert first.keywords and first.keywords.split(", ")[0]
    assert len(first.candidates["data"]) >= 1 and "scores: clip" in first.info
    assert first.prompt.endswith(PromptTemplate("{keywords}").compose("", first.keywords.split(", ")))

    prompt = PromptInputs(template="{caption}, {keywords}").flat()
    out = controller.regenerate_event("dog,  beach ###", image, models["sbg"], *strings(decoding), *prompt)
    caption, info, candidates, keywords, prompt = out
    assert keywords == "dog, beach"
    assert caption.strip() and candidates["data"]
    assert prompt.endswith("dog, beach")
    # Without an image the candidates are ranked by the language model.
    blind = controller.regenerate("dog, beach", None, models["sbg"], decoding, PromptInputs())
    assert "scores: logprob" in blind.info


def test_regenerate_needs_an_sbg_model_and_keywords(app, models, image):
    _, panels = app
    event = panels.caption.controller.regenerate_event
    rest = [*strings(DecodingInputs()), *PromptInputs(template="{caption}").flat()]
    shown = shown_error(event, "dog", image, models["prefix"], *rest)
    assert "does not write captions from keywords" in shown
    assert "no keywords" in shown_error(event, " , ", image, models["sbg"], *rest)


def test_caption_errors_are_shown_as_messages(app, models):
    _, panels = app
    rest = [*strings(DecodingInputs()), *PromptInputs(template="{caption}").flat()]
    event = panels.caption.controller.caption_event
    assert "no image" in shown_error(event, None, models["prefix"], *rest)
    assert "nothing-here" in shown_error(event, Image.new("RGB", (8, 8)), "/nothing-here/model.pt", *rest)


def test_compose_follows_template_and_reports_template_errors(app):
    _, panels = app
    compose = panels.caption.controller.compose_event
    assert compose(
        "A dog runs .", "Grass, grass, park", "{prefix}, {caption}, {keywords}", "lora", "", True
    ) == ("lora, a dog runs, grass, park")
    assert compose("A cat.", "", "{caption}", "", "hd", False) == "A cat, hd"
    assert compose("A cat.", "", "{oops}", "", "", False).startswith("(template error:")


def test_describe_reports_how_a_caption_was_made():
    from icg.captioners.result import Candidate, CaptionResult

    result = CaptionResult(
        caption="a dog.",
        model="m",
        candidates=[Candidate("a dog.", 0.5)],
        score_kind="clip",
        decoding={"strategy": "sample", "num_samples": 5},
        seed=9,
        timings={"encode": 0.25, "decode": 0.5},
    )
    assert describe(result) == "m · sample · 5 samples · seed 9 · 0.75 s · scores: clip"


# ------------------------------------------------------------------------------------------ batch
@pytest.fixture
def registry() -> JobRegistry:
    """A job registry of the test's own (the panels take the process's by default)."""
    return JobRegistry()


def run_to_end(controller: BatchController, inputs: BatchInputs, decoding: DecodingInputs | None = None):
    decoding = decoding or DecodingInputs(max_new_tokens="6")
    return list(controller.run_event(*inputs.flat(), *strings(decoding)))


class LockstepService(CaptionService):
    """Holds the batch after each progress report until the test has seen it in the page: the test
    observes every report, however busy the machine is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = threading.Event()

    def run_batch(self, options, *, on_progress=None, **callbacks):
        def report(done, total, info):
            on_progress(done, total, info)
            assert self.seen.wait(60), "the page never showed a progress report"
            self.seen.clear()

        return super().run_batch(options, on_progress=report, **callbacks)


def test_batch_start_streams_progress_and_writes_sidecars(manager, models, tmp_path, registry):
    images = fill_folder(tmp_path / "photos")
    service = LockstepService(manager, models=[models["prefix"]])
    controller = BatchController(service, registry=registry, interval=None)
    manifest = tmp_path / "out" / "captions.jsonl"
    inputs = BatchInputs(
        folder=str(tmp_path / "photos"),
        model=models["prefix"],
        manifest=str(manifest),
        batch_size="2",
        prefix="lora:me",
    )
    updates, shown = [], []
    for update in controller.run_event(*inputs.flat(), *strings(DecodingInputs(max_new_tokens="6"))):
        updates.append(update)
        report = update[0].split(" images")[0] if " / 3 images" in update[0] else None
        if report is not None and report not in shown:  # (results stream in between reports too)
            shown.append(report)
            service.seen.set()  # let the batch go on to its next report
    assert shown == ["0 / 3", "2 / 3", "3 / 3"], shown  # before the first batch, after each batch
    assert all(update[2]["interactive"] is False for update in updates[:-1])  # Start is off meanwhile
    progress, results, start, jobs = updates[-1]
    assert start["interactive"] is True
    assert progress.startswith("Done: 3 of 3 images"), progress
    assert "3 new" in progress
    assert jobs["headers"] == JOB_HEADERS and jobs["data"][0][1] == DONE
    assert results["headers"] == RESULT_HEADERS
    assert sorted(row[0] for row in results["data"]) == ["img0.png", "img1.png", "img2.png"]
    for image_path in images:
        sidecar = image_path.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8")
        assert text.startswith("lora:me, ") and text.endswith("\n")
        row = next(r for r in results["data"] if r[0] == image_path.name)
        assert row[1] == "new" and row[3] == str(sidecar)
    assert len(manifest.read_text(encoding="utf-8").splitlines()) == 3

    # The same run again: everything is already captioned (one report, before the first batch).
    service.seen.set()
    again = BatchInputs(folder=str(tmp_path / "photos"), model=models["prefix"], manifest=str(manifest))
    progress, results, _, _ = run_to_end(controller, again)[-1]
    assert progress.startswith("Done: 0 of 0 images") and "3 skipped" in progress


def test_batch_dry_run_previews_and_writes_nothing(service, models, tmp_path, registry):
    fill_folder(tmp_path / "photos", 4)
    controller = BatchController(service, registry=registry)
    progress, results, _, _ = run_to_end(
        controller,
        BatchInputs(folder=str(tmp_path / "photos"), model=models["prefix"], dry_run=True, preview="2"),
    )[-1]
    assert progress.startswith("Dry run (nothing written): 4 images found"), progress
    assert "4 new" in progress
    assert results["headers"] == PREVIEW_HEADERS
    assert len(results["data"]) == 2 and all(row[1] == "new" and row[2] for row in results["data"])
    assert not list((tmp_path / "photos").glob("*.txt"))


def test_batch_options_mirror_the_panel(service, models, tmp_path, registry):
    fill_folder(tmp_path / "in")
    controller = BatchController(service, registry=registry)
    options = controller.options(
        BatchInputs(
            folder=str(tmp_path / "in"),
            model=models["prefix"],
            recursive=True,
            extensions="png, JPG",
            sidecar_extension="caption",
            output_dir=str(tmp_path / "out"),
            policy="append",
            separator=", ",
            write_sidecars=True,
            manifest="",
            resume=False,
            batch_size="",
            template="{caption}, {suffix}",
            suffix="best",
            lowercase=True,
            max_keywords="2",
            strip_period=False,
        ),
        DecodingInputs(strategy="beam", num_beams="2", seed="-1", style="published"),
    )
    assert options.root == tmp_path / "in"
    assert options.extensions == (".jpg", ".png")
    assert options.sidecar_extension == ".caption"
    assert options.output_dir == tmp_path / "out"
    assert options.policy == "append" and options.manifest is None and options.resume is False
    assert options.batch_size is None  # automatic
    assert options.caption.style == "published"
    plain = controller.options(BatchInputs(folder=str(tmp_path / "in"), model="m"), DecodingInputs())
    assert plain.separator is None and plain.recursive is True and plain.template.max_keywords is None
    assert plain.template.template == BatchInputs.INITIAL["template"] and plain.preview == 3
    typed = controller.options(
        BatchInputs(folder=str(tmp_path / "in"), model="m", separator="\\n--\\n"), DecodingInputs()
    )
    assert typed.separator == "\n--\n"
    assert options.separator == ", "
    assert options.template == PromptTemplate(
        "{caption}, {suffix}", suffix="best", lowercase=True, max_keywords=2, strip_period=False
    )
    assert dict(options.decoding) == {"strategy": "beam", "num_beams": 2}  # -1: the model draws seeds
    with pytest.raises(ConfigError, match="batch_size must be 1 to 512"):
        zero = BatchInputs(folder=str(tmp_path / "in"), model="m", batch_size="0")
        controller.options(zero, DecodingInputs())


def test_batch_reports_bad_input_in_the_progress_box(service, models, tmp_path, registry):
    controller = BatchController(service, registry=registry)
    updates = run_to_end(controller, BatchInputs(folder=str(tmp_path / "missing"), model=models["prefix"]))
    assert len(updates) == 1
    assert updates[0][0] == f"Error: {tmp_path / 'missing'}: no such folder"
    fill_folder(tmp_path / "ok")
    updates = run_to_end(
        controller, BatchInputs(folder=str(tmp_path / "ok"), model=models["prefix"], policy="x")
    )
    assert updates[-1][0].startswith("Error: ") and "policy" in updates[-1][0]
    assert not list((tmp_path / "ok").glob("*.txt"))
    assert registry.jobs() == []  # nothing was submitted


class GatedService(CaptionService):
    """Holds each batch at the gate until the test opens it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def run_batch(self, options, **callbacks):
        self.waiting.set()
        assert self.gate.wait(60)
        return super().run_batch(options, **callbacks)


def test_stop_ends_the_run_and_only_one_runs_at_a_time(manager, models, tmp_path, registry):
    fill_folder(tmp_path / "photos", 4)
    service = GatedService(manager, models=[models["prefix"]])
    controller = BatchController(service, registry=registry)
    assert controller.stop() == "No batch is running."
    options = controller.options(
        BatchInputs(folder=str(tmp_path / "photos"), model=models["prefix"], batch_size="1"), DecodingInputs()
    )
    job = controller.start(options)
    with pytest.raises(ConfigError, match="already running"):
        controller.start(options)
    assert service.waiting.wait(60)  # running (a queued job would stop without running at all)
    assert "stopping" not in controller.render(job.snapshot())[0]
    assert controller.stop().startswith("Stopping")
    assert "(stopping after the current images)" in controller.render(job.snapshot())[0]
    service.gate.set()
    assert job.wait(60)
    summary = job.snapshot()["summary"]
    assert summary["stopped"] and summary["processed"] == 0
    progress, _ = controller.render(job.snapshot(results=True))
    assert progress.startswith("Stopped: 0 of 4 images"), progress
    assert not list((tmp_path / "photos").glob("*.txt"))
    # Once it has ended, a new run may start.
    second = controller.start(options)
    assert second.wait(60) and second.snapshot()["summary"]["processed"] == 4


def running_job(registry, **submit):
    """A job of another front end that holds the registry until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def work(job):
        started.set()
        assert gate.wait(60)
        return {}

    job = registry.submit(work, **submit)
    assert started.wait(60)
    return job, gate


def test_a_run_queued_behind_another_job_says_so_and_lists_it(service, models, tmp_path, registry):
    """An API batch (or auto-captioning) holds the registry: the tab's run waits and names it."""
    fill_folder(tmp_path / "photos", 1)
    other, gate = running_job(registry, kind="batch", label="/srv/api-folder")
    controller = BatchController(service, registry=registry)
    inputs = BatchInputs(folder=str(tmp_path / "photos"), model=models["prefix"])
    stream = controller.run_event(*inputs.flat(), *strings(DecodingInputs(max_new_tokens="4")))
    progress, _, start, jobs = next(stream)
    assert progress == f"Queued behind batch {other.id}", progress
    assert start["interactive"] is False
    listed = {row[0]: row for row in jobs["data"]}
    assert listed[f"batch {other.id}"][1:] == ["running", "0 / ?", "/srv/api-folder"]
    assert listed[f"batch {controller.job.id}"][1] == QUEUED
    assert controller.job.snapshot()["queued_behind"] == {"id": other.id, "kind": "batch"}
    gate.set()
    progress, *_ = list(stream)[-1]
    assert progress.startswith("Done: 1 of 1 images"), progress
    assert other.finished


def test_a_run_stopped_while_queued_never_starts(service, models, tmp_path, registry):
    fill_folder(tmp_path / "photos", 1)
    _, gate = running_job(registry, kind="autocaption")
    controller = BatchController(service, registry=registry)
    inputs = BatchInputs(folder=str(tmp_path / "photos"), model=models["prefix"])
    job = controller.start(controller.options(inputs, DecodingInputs()))
    assert controller.stop().startswith("Stopping")
    assert job.finished and controller.render(job.snapshot())[0] == "Stopped before it started."
    gate.set()
    assert not list((tmp_path / "photos").glob("*.txt"))


def test_stream_follows_changes_not_the_clock(registry):
    gate = threading.Event()

    def work(job):
        job.progress(1, 2)
        assert gate.wait(60)
        job.progress(2, 2)
        return {"ok": True}

    job = registry.submit(work)
    stream = stream_job(job)  # no interval: only changes wake it
    seen = []
    for snapshot in stream:
        seen.append((snapshot["status"], snapshot["done"]))
        if snapshot["done"] == 1:
            gate.set()
    done = [d for _, d in seen]
    assert seen[-1] == (DONE, 2) and 1 in done and done == sorted(done)


def test_fixed_folders_ignore_what_the_page_sends(service, models, tmp_path):
    fill_folder(tmp_path / "allowed")
    defaults = UiDefaults(batch_folder=str(tmp_path / "allowed"), allow_folders=False)
    demo, panels = build_app(service, defaults)
    assert panels.batch.folder.interactive is False
    assert panels.batch.output_dir.interactive is False
    assert panels.batch.manifest.interactive is False
    options = panels.batch.controller.options(
        BatchInputs(
            folder="/etc", model=models["prefix"], output_dir="/tmp/elsewhere", manifest="/tmp/m.jsonl"
        ),
        DecodingInputs(),
    )
    assert options.root == tmp_path / "allowed"
    assert options.output_dir is None and options.manifest is None


# ------------------------------------------------------------------------------------------ schema
def _choices(component) -> list:
    """A dropdown's choices as values (gradio 4+ keeps (label, value) pairs)."""
    return [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices]


def check_control(component, option, *, empty: bool) -> None:
    """``component`` is ``option``'s control: its label, help, bounds and choices are the schema's."""
    where = f"{option.name}: {type(component).__name__}"
    assert component.label == option.label, where
    assert option.help in (component.info or ""), where
    if option.choices:
        assert isinstance(component, gr.Dropdown), where
        assert _choices(component) == ([MODEL_DEFAULT] if empty else []) + list(option.choices), where
    elif option.type is bool:
        assert isinstance(component, gr.Checkbox), where
    elif option.type in (int, float):
        if isinstance(component, gr.Slider):
            assert (component.minimum, component.maximum) == (option.minimum, option.maximum), where
            assert component.step == option.step, where
        else:
            assert isinstance(component, gr.Textbox), where
            assert option.bounds_text() in component.info, where
    else:
        assert isinstance(component, gr.Textbox), where


def test_every_option_of_the_schema_has_its_control(app):
    """Fails when a control is missing, or its label, bounds or choices drift from icg.options."""
    _, panels = app
    for decoding in (panels.caption.decoding, panels.batch.decoding):
        assert decoding.names == (*DECODING.names, *CAPTION.names)
        for option in (*DECODING, *CAPTION):
            check_control(getattr(decoding, option.name), option, empty=True)
    assert panels.caption.prompt_options.names == TEMPLATE.names
    for option in TEMPLATE:
        check_control(getattr(panels.caption.prompt_options, option.name), option, empty=False)
        check_control(getattr(panels.batch, option.name), option, empty=False)
    for option in BATCH:
        check_control(getattr(panels.batch, option.name), option, empty=False)
    # The handlers take the controls in the order the panels hand them over.
    assert panels.batch.inputs() == [getattr(panels.batch, n) for n in BatchInputs.NAMES] + [
        getattr(panels.batch.decoding, n) for n in DecodingInputs.NAMES
    ]
