"""``python -m icg app``: its arguments, the panels' presets they make, and the server it starts."""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from icg.cli import build_parser, main
from icg.errors import ConfigError, IcgError


def parse(*argv: str):
    return build_parser().parse_args(["app", *argv])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_defaults_serve_on_loopback_with_the_first_free_port():
    from icg.commands.app import run

    args = parse()
    assert args.func is run
    assert args.host == "127.0.0.1" and args.port is None
    assert args.models == [] and args.folder == "" and args.inbrowser is False
    assert args.device == "auto" and args.clip is None and args.tokenizer is None


def test_models_runtime_and_decoding_options_are_parsed():
    args = parse(
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--model",
        "/m/a.pt",
        "--model",
        "sbg-flickr8k",
        "--clip",
        "/m/clip",
        "--tokenizer",
        "/m/tok",
        "--models-dir",
        "/m",
        "--device",
        "cpu",
        "--strategy",
        "beam",
        "--beams",
        "3",
        "--samples",
        "4",
        "--seed",
        "5",
        "--folder",
        "/photos",
        "--template",
        "{caption}, {suffix}",
        "--open",
    )
    assert (args.host, args.port) == ("0.0.0.0", 8123)
    assert args.models == ["/m/a.pt", "sbg-flickr8k"]
    assert (args.clip, args.tokenizer, args.models_dir, args.device) == ("/m/clip", "/m/tok", "/m", "cpu")
    assert args.inbrowser is True

    from icg.commands.app import ui_defaults

    defaults = ui_defaults(args)
    assert defaults.model == "/m/a.pt"
    assert (defaults.strategy, defaults.num_beams, defaults.num_samples, defaults.seed) == ("beam", 3, 4, 5)
    assert defaults.top_k is None and defaults.temperature is None
    assert defaults.batch_folder == "/photos"
    assert defaults.template == "{caption}, {suffix}"
    assert ui_defaults(parse()).seed == -1  # a new random seed per caption unless one is given


def test_there_is_no_public_share_link(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--share")
    assert exc.value.code == 2
    assert "--share" in capsys.readouterr().err


def test_a_bad_template_is_refused_before_serving():
    from icg.commands.app import ui_defaults

    with pytest.raises(ConfigError, match="unknown placeholder"):
        ui_defaults(parse("--template", "{caption} {nope}"))


def test_a_bad_port_is_an_argument_error(capsys):
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


def test_loopback_hosts():
    from icg.app import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("127.0.1.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_missing_gradio_says_how_to_install_it(monkeypatch):
    from icg.app import require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(IcgError, match=r"pip install 'icg\[app\]'"):
        require_gradio()


def test_the_app_serves_both_tabs_on_the_port_asked_for():
    pytest.importorskip("gradio")
    from icg.app import create_app, serve
    from icg.models.manager import ModelManager, RuntimeConfig

    manager = ModelManager(RuntimeConfig(device="cpu"))
    demo, panels = create_app(manager, models=["/m/a.pt"])
    port = free_port()
    url = serve(demo, "127.0.0.1", port, block=False)
    try:
        assert url.rstrip("/") == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            page = response.read().decode("utf-8", "replace")
        assert "Image Caption" in page  # the title
        assert panels.caption.model.value == "/m/a.pt"
        # The port is taken now: a second app on it is refused with a message naming it.
        other, _ = create_app(manager)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve(other, "127.0.0.1", port, block=False)
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------ listed models
@pytest.fixture(scope="module")
def fixture_manager(tmp_path_factory):
    from tests.webui_support import fixture_files, make_manager, models_folder

    files = fixture_files()
    manager = make_manager(files, models_folder(tmp_path_factory.mktemp("models"), files))
    yield files, manager
    manager.unload()


def test_the_app_refuses_a_model_path_it_does_not_list(fixture_manager, tmp_path):
    """A client can type any path into the model box: only listed models are loaded (as in the API)."""
    from PIL import Image

    from icg.app import AppService
    from icg.errors import ModelNotFound
    from icg.jobs import JobRegistry
    from icg.ui.handlers import BatchController, BatchInputs, CaptionController, DecodingInputs, PromptInputs
    from tests.webui_support import write_images

    files, manager = fixture_manager
    manager.unload()
    typed = files["clip_prefix_pt"]  # a real model file, but not one the app offers
    service = AppService(manager)
    assert typed not in service.model_choices()
    image = Image.new("RGB", (40, 32), (200, 30, 30))
    caption = CaptionController(service)
    with pytest.raises(ModelNotFound, match="unknown model.*--allow-model-paths"):
        caption.caption(image, typed, DecodingInputs(max_new_tokens="3"), PromptInputs())
    with pytest.raises(ModelNotFound, match="--allow-model-paths"):
        caption.regenerate("dog", image, typed, DecodingInputs(), PromptInputs())
    assert manager.loaded()["captioners"] == []  # nothing was loaded

    write_images(tmp_path, 1)
    registry = JobRegistry()
    tab = BatchController(service, registry=registry)
    job = tab.start(tab.options(BatchInputs(folder=str(tmp_path), model=typed), DecodingInputs()))
    assert job.wait(120)
    assert "unknown model" in job.snapshot()["error"]
    assert not (tmp_path / "img0.txt").exists() and manager.loaded()["captioners"] == []

    allowed = CaptionController(AppService(manager, allow_model_paths=True))
    result = allowed.caption(image, typed, DecodingInputs(max_new_tokens="3"), PromptInputs())
    assert result.caption
    listed = CaptionController(AppService(manager, models=[typed]))  # given with --model: listed
    assert listed.caption(image, typed, DecodingInputs(max_new_tokens="3"), PromptInputs()).caption


def test_allow_model_paths_is_a_flag_that_reaches_the_app(monkeypatch):
    from icg.commands import app as command

    assert parse().allow_model_paths is False and parse("--allow-model-paths").allow_model_paths is True
    seen = {}

    def fake_create_app(manager, **kwargs):
        seen.update(kwargs)
        raise IcgError("stop here")

    monkeypatch.setattr("icg.app.create_app", fake_create_app)
    monkeypatch.setattr(command, "make_manager", lambda args: None)
    with pytest.raises(IcgError, match="stop here"):
        command.run(parse("--allow-model-paths"))
    assert seen["allow_model_paths"] is True
