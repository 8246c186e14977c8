"""The HTTP API (icg.api) on a bare FastAPI app, with the library's CaptionService and the fixture models:
models listing, captions from base64 images and from keywords, auth, --hide-ui-dir-config, bad payloads
(4xx, never 500), and a folder batch polled to completion."""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from icg.api import basic_auth, decode_image, mount_api, parse_credentials
from icg.errors import ConfigError
from icg.jobs import DONE, JobRegistry
from icg.ui.service import CaptionService
from tests.webui_support import (
    SBG_LOCAL,
    fixture_files,
    make_manager,
    models_folder,
    png_base64,
    write_images,
)


@pytest.fixture(scope="module")
def files():
    return fixture_files()


@pytest.fixture(scope="module")
def service(files, tmp_path_factory):
    root = models_folder(tmp_path_factory.mktemp("models"), files)
    manager = make_manager(files, root)
    prefix = files["clip_prefix_pt"]
    yield CaptionService(manager, models=[prefix], default_model=prefix)
    manager.unload()


class CountingLock:
    """A lock that counts how often it was taken (the WebUI's queue_lock stand-in)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entered = 0

    def __enter__(self):
        self._lock.acquire()
        self.entered += 1
        return self

    def __exit__(self, *exc):
        self._lock.release()


def client_for(service, **kwargs) -> tuple[TestClient, object]:
    """A client of the routes mounted with a job registry of the test's own (unless one is given)."""
    app = FastAPI()
    kwargs.setdefault("jobs", JobRegistry())
    router = mount_api(app, service, **kwargs)
    return TestClient(app), router


def wait_for(client, router, job_id, timeout=300.0):
    """The job's body once it has finished (waiting on the job itself, not polling the clock)."""
    assert router.jobs.get(job_id).wait(timeout), f"job {job_id} did not finish in {timeout} s"
    return client.get(f"/icg/v1/batch/{job_id}").json()


# ------------------------------------------------------------------------------------------ models
def test_models_lists_choices_with_install_state(service, files):
    client, _ = client_for(service)
    response = client.get("/icg/v1/models")
    assert response.status_code == 200
    body = response.json()
    by_id = {m["id"]: m for m in body["models"]}
    assert body["default"] == files["clip_prefix_pt"]
    assert by_id[files["clip_prefix_pt"]]["installed"] and by_id[files["clip_prefix_pt"]]["default"]
    assert by_id[SBG_LOCAL]["kind"] == "sbg" and by_id[SBG_LOCAL]["size_bytes"] > 0
    flickr = by_id["clip-prefix-flickr8k"]  # a registry model nobody downloaded here
    assert flickr["installed"] is False
    assert any(f.startswith("clip-prefix-flickr8k/") for f in flickr["missing"])


# ------------------------------------------------------------------------------------------ captions
def test_caption_from_base64_image(service, files):
    lock = CountingLock()
    client, _ = client_for(service, queue_lock=lock)
    response = client.post(
        "/icg/v1/caption",
        json={
            "image": png_base64(),
            "decoding": {"strategy": "beam", "num_beams": 2, "max_new_tokens": 5},
            "template": {"template": "{prefix}, {caption}", "prefix": "photo"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == files["clip_prefix_pt"]
    assert body["decoding"]["strategy"] == "beam" and body["decoding"]["num_beams"] == 2
    assert len(body["candidates"]) == 2 and len(body["scores"]) == 2
    assert body["scores"] == [c["score"] for c in body["candidates"]]
    assert body["prompt"].startswith("photo")
    assert lock.entered == 1  # the model work ran under the host's lock


def test_caption_accepts_a_data_url_and_is_seeded(service):
    client, _ = client_for(service)
    payload = {
        "image": "data:image/png;base64," + png_base64(color=(10, 200, 30)),
        "decoding": {"strategy": "sample", "seed": 7, "max_new_tokens": 6},
        "num_candidates": 3,
    }
    first = client.post("/icg/v1/caption", json=payload)
    second = client.post("/icg/v1/caption", json=payload)
    assert first.status_code == 200, first.text
    assert first.json()["seed"] == 7 and len(first.json()["candidates"]) == 3
    assert first.json()["caption"] == second.json()["caption"]


def test_caption_from_keywords_with_an_sbg_model(service):
    client, _ = client_for(service)
    response = client.post(
        "/icg/v1/caption",
        json={
            "keywords": "dog, grass",
            "model": SBG_LOCAL,
            "num_candidates": 2,
            "decoding": {"seed": 3, "max_new_tokens": 8},
            "template": {"template": "{caption}, {keywords}"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [k["text"] for k in body["keywords"]] == ["dog", "grass"]
    assert {k["step"] for k in body["keywords"]} == {"user"}
    assert body["score_kind"] == "logprob" and len(body["candidates"]) == 2
    assert body["prompt"].endswith("dog, grass")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"image": "not base64 at all!!"}, 400, "base64"),
        ({"image": "aGVsbG8gd29ybGQ="}, 400, "not a readable image"),  # "hello world"
        ({"image": "data:image/png,abc"}, 400, "base64"),
        ({}, 422, "image"),
        ({"keywords": []}, 422, "image"),
        ({"image": "x", "model": "no-such-model"}, 404, "unknown model"),
        ({"image": "x", "num_candidates": 0}, 422, ""),
        ({"image": "x", "decoding": {"temperature": -1}}, 422, ""),
        ({"image": "x", "decoding": {"top_p": 2}}, 422, ""),
        ({"image": "x", "decoding": {"strategy": "nucleus"}}, 422, ""),
        ({"image": "x", "decoding": {"max_new_tokens": 100000}}, 422, ""),
        ({"image": "x", "temprature": 1.0}, 422, ""),
        ({"image": "x", "template": {"template": "{nope}"}}, 422, "placeholder"),
        ({"keywords": ["dog"], "model": "FIXTURE_PREFIX"}, 422, "keywords"),
    ],
)
def test_bad_caption_requests_are_4xx_with_a_message(service, files, payload, status, needle):
    client, _ = client_for(service)
    if payload.get("model") == "FIXTURE_PREFIX":
        payload = {**payload, "model": files["clip_prefix_pt"]}
    response = client.post("/icg/v1/caption", json=payload)
    assert response.status_code == status, response.text
    assert needle.lower() in response.text.lower()


def test_malformed_json_is_422_not_500(service):
    client, _ = client_for(service)
    response = client.post(
        "/icg/v1/caption", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_decode_image_refuses_empty_and_accepts_unpadded(service):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as err:
        decode_image("")
    assert err.value.status_code == 400
    image = decode_image(png_base64().rstrip("="))
    assert image.mode == "RGB" and image.size == (40, 32)


@pytest.mark.parametrize("text", ["!!!!", "%%%", "not base64 at all!!", "data:image/png;base64,@@@@"])
def test_invalid_base64_is_named_as_such_not_empty(text):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as err:
        decode_image(text)
    assert err.value.status_code == 400 and err.value.detail == "image: not valid base64"


def test_decode_image_accepts_the_url_safe_alphabet():
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (250, 251, 252)).save(buffer, format="PNG")
    data = base64.urlsafe_b64encode(buffer.getvalue()).decode("ascii")
    assert decode_image(data).size == (3, 2)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"image": "x", "decoding": {"temperature": NaN}}', "temperature"),
        (b'{"image": "x", "decoding": {"top_p": Infinity}}', "top_p"),
        (b'{"image": "x", "decoding": {"repetition_penalty": -Infinity}}', "repetition_penalty"),
        (b'{"image": "x", "decoding": {"num_beams": NaN}}', "num_beams"),
        (b'{"image": "x", "num_candidates": Infinity}', "num_candidates"),
    ],
)
def test_nan_and_infinity_are_a_json_422_naming_the_field(service, body, field):
    """Python's JSON reader takes NaN/Infinity; the error about them must still be JSON (not a 500)."""
    client, _ = client_for(service)
    response = client.post("/icg/v1/caption", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == field and error["msg"]


def test_a_422_does_not_echo_a_large_input_back(service):
    client, _ = client_for(service)
    response = client.post("/icg/v1/caption", json={"image": ["A" * 2_000_000], "model": "m" * 100_000})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    by_field = {e["loc"][-1]: e for e in response.json()["detail"]}
    assert set(by_field) == {"image", "model"}
    assert "input" not in by_field["image"]  # a list is never quoted back
    quoted = by_field["model"].get("input", "")  # pydantic 2 quotes what was given; pydantic 1 does not
    assert len(quoted) < 200 and quoted.endswith("(100000 characters)" if quoted else "")


def test_a_request_body_over_the_limit_is_a_413_before_it_is_parsed(service):
    client, _ = client_for(service, max_request_bytes=1_000)
    payload = {"image": png_base64(), "model": "x" * 2_000}  # would be a 422 if it were parsed
    response = client.post("/icg/v1/caption", json=payload)
    assert response.status_code == 413 and "request too large" in response.json()["detail"]

    def chunks():  # no Content-Length: the body is counted while it is read
        yield b'{"image": "'
        for _ in range(10):
            yield b"A" * 500
        yield b'"}'

    chunked = client.post("/icg/v1/caption", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413
    assert client.post("/icg/v1/caption", json={"image": png_base64()}).status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_upload_over_the_pixel_limit_is_a_413_before_decoding(service, tmp_path):
    import base64

    from tests.test_imaging import _claimed_size_png

    bomb = _claimed_size_png(tmp_path, 13_000, 13_000).read_bytes()  # 1x1 pixels, its header says more
    client, _ = client_for(service)  # the default limit
    response = client.post("/icg/v1/caption", json={"image": base64.b64encode(bomb).decode("ascii")})
    assert response.status_code == 413, response.text  # had its pixels been decoded: 400 (too few)
    assert "too large" in response.json()["detail"] and "13000x13000" in response.json()["detail"]
    small, _ = client_for(service, max_pixels=40 * 32 - 1)
    response = small.post("/icg/v1/caption", json={"image": png_base64(size=(40, 32))})
    assert response.status_code == 413 and "limit 1279" in response.json()["detail"]
    assert client.post("/icg/v1/caption", json={"image": png_base64(size=(40, 32))}).status_code == 200


def test_decoded_uploads_are_bounded_by_the_decode_slots(service):
    """A request holds a decode slot from decoding to its caption; with one slot, no other can decode."""
    gate, started = threading.Event(), threading.Event()

    class Gated(CaptionService):
        def caption(self, image, model, decoding=None, options=None):
            started.set()
            assert gate.wait(60)
            return super().caption(image, model, decoding, options)

    gated = Gated(service.manager, models=service.extra_models, default_model=service.default_model())
    client, router = client_for(gated, decode_slots=1)
    responses = []
    worker = threading.Thread(
        target=lambda: responses.append(client.post("/icg/v1/caption", json={"image": png_base64()}))
    )
    worker.start()
    try:
        assert started.wait(60)
        assert not router.decode_slots.acquire(blocking=False)  # the one slot is taken by that request
    finally:
        gate.set()
        worker.join(120)
    assert responses and responses[0].status_code == 200, responses
    assert router.decode_slots.acquire(blocking=False)  # and given back afterwards
    router.decode_slots.release()


def test_non_finite_scores_are_sent_as_null_not_a_500(service):
    """On fastapi 0.94 + pydantic 1 (the WebUI's pins) a NaN in the response was a plain-text 500."""
    from icg.captioners.result import Candidate, CaptionResult, Keyword

    class Infinite(CaptionService):
        def caption(self, image, model, decoding=None, options=None):
            return CaptionResult(
                caption="a dog",
                model=model,
                candidates=[Candidate("a dog", float("-inf")), Candidate("a cat", -1.5)],
                score_kind="logprob",
                keywords=[Keyword("dog", float("nan"), "clip")],
                timings={"decode": float("inf")},
            )

    client, _ = client_for(Infinite(service.manager, models=service.extra_models))
    response = client.post("/icg/v1/caption", json={"image": png_base64()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scores"] == [None, -1.5] and body["keywords"][0]["score"] is None
    assert body["timings"] == {"decode": None}


def test_decode_slots_must_be_positive(service):
    with pytest.raises(ConfigError, match="decode_slots"):
        client_for(service, decode_slots=0)


# ------------------------------------------------------------------------------------------ auth
def test_auth_on_protects_every_route(service):
    client, _ = client_for(service, auth=basic_auth(parse_credentials("alice:s3:cret,bob:pw")))
    assert client.get("/icg/v1/models").status_code == 401
    denied = client.get("/icg/v1/models", auth=("alice", "wrong"))
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Basic"
    assert client.get("/icg/v1/models", auth=("mallory", "pw")).status_code == 401
    assert client.post("/icg/v1/unload").status_code == 401
    assert client.get("/icg/v1/batch/none").status_code == 401
    assert client.get("/icg/v1/models", auth=("alice", "s3:cret")).status_code == 200
    assert client.get("/icg/v1/models", auth=("bob", "pw")).status_code == 200


def test_auth_off_needs_no_credentials(service):
    client, _ = client_for(service)
    assert client.get("/icg/v1/models").status_code == 200


@pytest.mark.parametrize("text", ["", "alice", ":pw", " , "])
def test_malformed_credentials_are_refused(text):
    with pytest.raises(ConfigError):
        parse_credentials(text)


# ------------------------------------------------------------------------------------------ batches
def test_batch_job_polled_to_completion(service, files, tmp_path):
    folder = tmp_path / "photos"
    images = write_images(folder, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "img0.txt").write_text("kept as it was\n", encoding="utf-8")
    lock = CountingLock()
    client, router = client_for(service, queue_lock=lock)
    response = client.post(
        "/icg/v1/batch",
        json={
            "folder": str(folder),
            "policy": "skip",
            "manifest": str(tmp_path / "out.jsonl"),
            "decoding": {"max_new_tokens": 4},
            "batch_size": 2,
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in ("queued", "running", "done") and job["total"] == 4
    body = wait_for(client, router, job["id"])
    assert body["status"] == DONE, body
    assert body["progress"] == 1.0 and body["done"] == 4
    summary = body["summary"]
    assert summary["counts"]["new"] == 2 and summary["counts"]["manifest_only"] == 1
    assert summary["failed"] == 1 and summary["failures"][0]["key"] == "broken.png"
    assert (folder / "img0.txt").read_text(encoding="utf-8") == "kept as it was\n"
    for image in images[1:]:
        assert image.with_suffix(".txt").read_text(encoding="utf-8").strip()
    assert (tmp_path / "out.jsonl").is_file()
    assert lock.entered == 1
    listed = client.get("/icg/v1/batch").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert router.jobs.get(job["id"]).finished


def test_batch_dry_run_writes_nothing(service, tmp_path):
    folder = tmp_path / "dry"
    write_images(folder, 2)
    client, router = client_for(service)
    response = client.post(
        "/icg/v1/batch", json={"folder": str(folder), "dry_run": True, "decoding": {"max_new_tokens": 3}}
    )
    assert response.status_code == 202, response.text
    body = wait_for(client, router, response.json()["id"])
    assert body["status"] == DONE and body["summary"]["dry_run"] is True
    assert len(body["summary"]["preview"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img1.png"]


def test_batch_refused_under_hide_dirs(service, tmp_path):
    write_images(tmp_path, 1)
    client, _ = client_for(service, hide_dirs=True)
    response = client.post("/icg/v1/batch", json={"folder": str(tmp_path)})
    assert response.status_code == 403 and "hide-ui-dir-config" in response.text
    assert not (tmp_path / "img0.txt").exists()


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"folder": "/no/such/folder/anywhere"}, 404),
        ({"folder": ""}, 422),
        ({}, 422),
        ({"folder": "FOLDER", "policy": "clobber"}, 422),
        ({"folder": "FOLDER", "extension": ".png"}, 422),
        ({"folder": "FOLDER", "manifest": "out.xml"}, 422),
        ({"folder": "FOLDER", "sidecars": False}, 422),
        ({"folder": "FOLDER", "batch_size": 0}, 422),
        ({"folder": "FOLDER", "model": "no-such-model"}, 404),
    ],
)
def test_bad_batch_requests_are_4xx(service, tmp_path, payload, status):
    write_images(tmp_path, 1)
    if payload.get("folder") == "FOLDER":
        payload = {**payload, "folder": str(tmp_path)}
    client, _ = client_for(service)
    response = client.post("/icg/v1/batch", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_unknown_job_is_404(service):
    client, _ = client_for(service)
    assert client.get("/icg/v1/batch/batch-99-deadbeef").status_code == 404
    assert client.post("/icg/v1/batch/batch-99-deadbeef/stop").status_code == 404


def test_unload_frees_the_models(service):
    client, _ = client_for(service)
    assert client.post("/icg/v1/caption", json={"image": png_base64()}).status_code == 200
    assert service.manager.loaded()["captioners"]
    response = client.post("/icg/v1/unload")
    assert response.status_code == 200
    assert response.json()["unloaded"] is True and response.json()["loaded"]["captioners"] == []


def test_batch_routes_share_the_registry_with_the_tab(service, tmp_path):
    """A batch of the Batch tab is listed by the API, and an API batch waits behind it and says so."""
    from icg.jobs import registry as process_registry
    from icg.ui.handlers import BatchController, BatchInputs, DecodingInputs

    assert client_for(service, jobs=None)[1].jobs is process_registry()  # the default: the process's
    registry = JobRegistry()
    client, router = client_for(service, jobs=registry)
    gate, started = threading.Event(), threading.Event()

    class Gated(CaptionService):
        def run_batch(self, options, **callbacks):
            started.set()
            assert gate.wait(60)
            return super().run_batch(options, **callbacks)

    write_images(tmp_path / "tab", 1)
    write_images(tmp_path / "api", 1)
    tab = BatchController(Gated(service.manager, models=service.extra_models), registry=registry)
    inputs = BatchInputs(folder=str(tmp_path / "tab"), model=service.default_model())
    tab_job = tab.start(tab.options(inputs, DecodingInputs(max_new_tokens="3")))
    assert started.wait(60)
    payload = {"folder": str(tmp_path / "api"), "decoding": {"max_new_tokens": 3}}
    response = client.post("/icg/v1/batch", json=payload)
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued" and queued["ahead"] == 1
    assert queued["queued_behind"] == {"id": tab_job.id, "kind": "batch"}
    listed = client.get("/icg/v1/batch").json()["jobs"]
    assert [(j["id"], j["status"], j["label"]) for j in listed] == [
        (tab_job.id, "running", str(tmp_path / "tab")),
        (queued["id"], "queued", str(tmp_path / "api")),
    ]
    gate.set()
    body = wait_for(client, router, queued["id"])
    assert body["status"] == DONE and body["queued_behind"] is None and tab_job.finished
