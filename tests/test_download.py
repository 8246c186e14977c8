"""Downloads against a local HTTP server on 127.0.0.1 and a fake huggingface_hub; no network."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import sys
import threading
import types
from pathlib import Path

import pytest

from icg.errors import DownloadError
from icg.models import download
from icg.models.registry import load_registry, parse_registry

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
REAL_PROBE = download.probe_origin


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) and records each request's method, path and Range header."""

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _send(self, body_only_headers: bool):
        server = self.server
        server.requests.append((self.command, self.path, self.headers.get("Range")))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body_only_headers:
            self.wfile.write(data)

    def do_GET(self):
        self._send(False)

    def do_HEAD(self):
        self._send(True)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """The conftest sets HF_HUB_OFFLINE=1; tests opt into offline mode explicitly. The one-request
    reachability probe of the Hugging Face endpoint is told the hub answers (tests opt out)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ICG_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    probes = []

    def probe(origin, timeout=download.PROBE_TIMEOUT_S):
        probes.append(origin)
        return None

    monkeypatch.setattr(download, "probe_origin", probe)
    download.forget_unreachable()
    yield probes
    download.forget_unreachable()


def _url_entry(base: str, *, sha256: str | None = PAYLOAD_SHA, size: int | None = len(PAYLOAD), name="w.bin"):
    raw = {
        "id": "tiny-url",
        "display_name": "Tiny URL model",
        "kind": "sbg-vocabulary",
        "description": "test",
        "files": [name],
        "sources": [
            # the registry wants https; the test server is plain http on loopback
            {"kind": "url", "url": "https://placeholder.invalid/" + name, "filename": name},
            {"kind": "manual", "url": "https://example.invalid/page", "filename": name},
        ],
    }
    entry = parse_registry({"schema": 1, "models": [raw]})["tiny-url"]
    patched = dataclasses.replace(entry.sources[0], url=f"{base}/{name}", sha256=sha256, size=size)
    return dataclasses.replace(entry, sources=(patched, entry.sources[1]))


def _hf_entry(optional_missing: bool = False):
    files = ["config.json", "model.safetensors"]
    sources = [{"kind": "hf", "repo": "someone/tiny", "filename": f} for f in files]
    if optional_missing:
        files.append("extra.json")
        sources.append({"kind": "hf", "repo": "someone/tiny", "filename": "extra.json", "optional": True})
    raw = {
        "id": "tiny-hf",
        "display_name": "Tiny HF model",
        "kind": "tokenizer",
        "description": "test",
        "files": files,
        "sources": sources,
    }
    return parse_registry({"schema": 1, "models": [raw]})["tiny-hf"]


class _Calls(list):
    module: types.ModuleType


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in ``huggingface_hub`` module recording hf_hub_download calls."""
    calls = _Calls()
    module = types.ModuleType("huggingface_hub")

    def hf_hub_download(repo_id, filename, *, revision=None, local_dir=None, **kwargs):
        calls.append(
            {"repo_id": repo_id, "filename": filename, "revision": revision, "local_dir": local_dir, **kwargs}
        )
        if filename == "extra.json":
            raise FileNotFoundError("404 Client Error: Entry Not Found for url")
        if kwargs.get("local_files_only"):
            cached = module.cache.get((repo_id, filename))
            if cached is None:
                raise FileNotFoundError("Cannot find the requested files in the disk cache")
            return str(cached)
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {filename}")
        return str(path)

    module.hf_hub_download = hf_hub_download
    module.cache = {}  # (repo, filename) -> path: what the hub's own cache holds
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    calls.module = module
    return calls


# ---------------------------------------------------------------------------------------------------


def test_sha256_and_verify(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert download.sha256_file(path) == PAYLOAD_SHA
    assert download.verify_file(path, PAYLOAD_SHA) == PAYLOAD_SHA
    assert download.verify_file(path, None) is None
    with pytest.raises(DownloadError) as info:
        download.verify_file(path, "0" * 64)
    assert "0" * 64 in str(info.value) and PAYLOAD_SHA in str(info.value) and str(path) in str(info.value)


def test_url_download_verifies_and_renames(server, tmp_path, caplog):
    server.files["w.bin"] = PAYLOAD
    entry = _url_entry(server.base)
    assert not download.present(entry, tmp_path)
    with caplog.at_level(logging.INFO, logger="icg"):
        folder = download.download_model(entry, tmp_path, progress=False)
    assert folder == tmp_path / "tiny-url"
    assert (folder / "w.bin").read_bytes() == PAYLOAD
    assert not (folder / "w.bin.part").exists()
    assert download.present(entry, tmp_path)
    assert download.local_size(entry, tmp_path) == len(PAYLOAD)
    assert "1.0 MB" in caplog.text  # the total is announced before starting
    # a second call finds the file and touches no server
    count = len(server.requests)
    download.download_model(entry, tmp_path, progress=False)
    assert len(server.requests) == count


def test_url_download_with_progress_bar(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    download.download_model(_url_entry(server.base), tmp_path, progress=True)
    assert (tmp_path / "tiny-url" / "w.bin").read_bytes() == PAYLOAD


def test_failed_url_download_leaves_nothing_and_starts_over(server, tmp_path):
    server.files["w.bin"] = PAYLOAD[:1000]  # a truncated answer: the size check fails
    entry = _url_entry(server.base)
    with pytest.raises(DownloadError, match="size mismatch"):
        download.download_model(entry, tmp_path, progress=False)
    assert not (tmp_path / "tiny-url").exists()  # no temp file, no empty folder
    server.files["w.bin"] = PAYLOAD
    download.download_model(entry, tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "tiny-url").iterdir()] == ["w.bin"]
    assert (tmp_path / "tiny-url" / "w.bin").read_bytes() == PAYLOAD
    assert all(rng is None for _method, _path, rng in server.requests)  # never a ranged request


def test_sha_mismatch_deletes_and_names_everything(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    wrong = "0" * 64
    entry = _url_entry(server.base, sha256=wrong, size=None)
    with pytest.raises(DownloadError) as info:
        download.download_model(entry, tmp_path, progress=False)
    text = str(info.value)
    assert "w.bin" in text and wrong in text and PAYLOAD_SHA in text
    assert not (tmp_path / "tiny-url" / "w.bin").exists()
    assert not (tmp_path / "tiny-url" / "w.bin.part").exists()


def test_size_mismatch_is_an_error(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    entry = _url_entry(server.base, sha256=None, size=len(PAYLOAD) + 1)
    with pytest.raises(DownloadError, match="size mismatch"):
        download.download_model(entry, tmp_path, progress=False)


def test_http_error_and_unreachable(server, tmp_path):
    entry = _url_entry(server.base)  # nothing served: 404
    with pytest.raises(DownloadError) as info:
        download.download_model(entry, tmp_path, progress=False)
    text = str(info.value)
    assert "HTTP 404" in text and f"{server.base}/w.bin" in text
    assert "python -m icg import FILE --as tiny-url" in text

    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError) as info:
        download.download_model(entry, tmp_path, progress=False)
    text = str(info.value)
    assert "w.bin" in text and f"{server.base}/w.bin" in text and "python -m icg import" in text


@pytest.mark.parametrize("how", ["argument", "ICG_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_refuses_with_one_clear_message(server, tmp_path, monkeypatch, how):
    server.files["w.bin"] = PAYLOAD
    entry = _url_entry(server.base)
    offline = None
    if how == "argument":
        offline = True
    else:
        monkeypatch.setenv(how, "1")
    with pytest.raises(DownloadError) as info:
        download.download_model(entry, tmp_path, offline=offline, progress=False)
    text = str(info.value)
    assert "offline" in text.splitlines()[0]
    check_install_block(
        text,
        [f"{server.base}/w.bin", "https://example.invalid/page"],
        "python -m icg import FILE --as tiny-url",
    )
    assert server.requests == []
    assert not (tmp_path / "tiny-url").exists()


def test_offline_is_fine_when_files_are_present(tmp_path, monkeypatch):
    monkeypatch.setenv("ICG_OFFLINE", "1")
    entry = _url_entry("http://127.0.0.1:9")
    (tmp_path / "tiny-url").mkdir()
    (tmp_path / "tiny-url" / "w.bin").write_bytes(b"x")
    assert download.download_model(entry, tmp_path) == tmp_path / "tiny-url"


def test_manual_only_entry(tmp_path):
    entry = load_registry()["clipcap-coco-mlp"]
    with pytest.raises(DownloadError) as info:
        download.download_model(entry, tmp_path, offline=False)
    text = str(info.value)
    assert "https://drive.google.com/file/d/1IdaBtMSvtyzF0ByVaBHtvM0JYSXRExRX" in text
    assert "python -m icg import FILE --as clipcap-coco-mlp" in text
    assert "automatically" in text and "ClipCap (COCO, MLP)" in text


def test_hf_download_passes_repo_filename_local_dir(fake_hub, tmp_path):
    entry = _hf_entry()
    folder = download.download_model(entry, tmp_path, offline=False, progress=False)
    assert folder == tmp_path / "tiny-hf"
    assert [(c["repo_id"], c["filename"], c["local_dir"]) for c in fake_hub] == [
        ("someone/tiny", "config.json", str(folder)),
        ("someone/tiny", "model.safetensors", str(folder)),
    ]
    assert all("local_dir_use_symlinks" not in c for c in fake_hub)
    assert download.present(entry, tmp_path)


def test_hf_optional_file_may_be_missing(fake_hub, tmp_path):
    entry = _hf_entry(optional_missing=True)
    download.download_model(entry, tmp_path, offline=False, progress=False)
    assert download.present(entry, tmp_path)
    assert not (tmp_path / "tiny-hf" / "extra.json").exists()
    # once the required files are there, the optional one is not retried
    calls = len(fake_hub)
    download.download_model(entry, tmp_path, offline=False, progress=False)
    assert len(fake_hub) == calls


def test_hf_offline_only_looks_in_the_hub_cache(fake_hub, tmp_path, monkeypatch, _online):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        download.download_model(_hf_entry(), tmp_path)
    assert fake_hub and all(c["local_files_only"] and c["local_dir"] is None for c in fake_hub)
    assert _online == []  # no network probe either
    text = str(info.value)
    assert "offline" in text.splitlines()[0]
    check_install_block(
        text,
        ["https://huggingface.co/someone/tiny/resolve/main/config.json"],
        "python -m icg import FOLDER --as tiny-hf",
    )
    assert not (tmp_path / "tiny-hf").exists()


def test_hf_offline_copies_from_the_hub_cache(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    for name in ("config.json", "model.safetensors"):
        (cache / name).write_text(f"cached {name}")
        fake_hub.module.cache[("someone/tiny", name)] = cache / name
    folder = download.download_model(_hf_entry(), tmp_path / "models")
    assert (folder / "model.safetensors").read_text() == "cached model.safetensors"
    assert download.present(_hf_entry(), tmp_path / "models")


def test_unreachable_hub_fails_fast_once_per_host(fake_hub, tmp_path, monkeypatch, _online):
    def unreachable(origin, timeout=download.PROBE_TIMEOUT_S):
        _online.append(origin)
        return "unreachable ([Errno -2] Name or service not known)"

    monkeypatch.setattr(download, "probe_origin", unreachable)
    other = dataclasses.replace(_hf_entry(), id="tiny-hf2")
    with pytest.raises(DownloadError) as info:
        download.download_models([_hf_entry(), other], tmp_path, offline=False, progress=False)
    assert [c for c in fake_hub if not c.get("local_files_only")] == []  # the slow hub call never ran
    assert _online == ["https://huggingface.co"]  # one probe for every file of both models
    text = str(info.value)
    headlines = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(headlines) == 2  # one per model, each followed by its install block
    assert "config.json" in headlines[0] and "Name or service not known" in headlines[0]
    first = text[: text.index(headlines[1])]
    check_install_block(
        first,
        ["https://huggingface.co/someone/tiny/resolve/main/config.json"],
        "python -m icg import FOLDER --as tiny-hf",
    )
    assert not (tmp_path / "tiny-hf").exists()  # the folder a failed download created is gone


def test_unreachable_url_host_is_remembered(server, tmp_path):
    entry = _url_entry(server.base)
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match="unreachable"):
        download.download_model(entry, tmp_path, progress=False)
    assert download.unreachable_reason(server.base + "/x") is not None
    download.forget_unreachable()


def test_an_explicit_download_forgets_the_unreachable_memo(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    entry = _url_entry(server.base)
    download._mark_unreachable(server.base, "unreachable (the network was down a moment ago)")
    with pytest.raises(DownloadError, match="the network was down"):  # an implicit install trusts the memo
        download.download_model(entry, tmp_path, progress=False)
    done = download.download_models([entry], tmp_path, progress=False)  # the user asked: probe again
    assert done == {"tiny-url": tmp_path / "tiny-url"} and download.present(entry, tmp_path)


def test_probe_origin_reports_any_http_answer_as_reachable(server):
    assert REAL_PROBE(server.base) is None  # a 404 for "/" is an answer
    server.shutdown()
    server.server_close()
    reason = REAL_PROBE(server.base, timeout=2)
    assert reason is not None and "unreachable" in reason


def test_hf_errors_become_download_errors(monkeypatch, tmp_path):
    module = types.ModuleType("huggingface_hub")

    def hf_hub_download(**kwargs):
        raise ConnectionError("Max retries exceeded")

    module.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    with pytest.raises(DownloadError) as info:
        download.download_model(_hf_entry(), tmp_path, offline=False)
    text = str(info.value)
    assert "ConnectionError" in text and "config.json" in text and "python -m icg import" in text


def test_download_models_totals_and_collects_failures(server, fake_hub, tmp_path, caplog):
    server.files["w.bin"] = PAYLOAD
    url_entry = _url_entry(server.base)
    manual = load_registry()["clipcap-coco-mlp"]
    with caplog.at_level(logging.INFO, logger="icg"), pytest.raises(DownloadError) as info:
        download.download_models([url_entry, _hf_entry(), manual], tmp_path, offline=False, progress=False)
    assert "3 model(s)" in caplog.text and "in total" in caplog.text
    assert "clipcap-coco-mlp" in str(info.value)
    # the others were still fetched
    assert download.present(url_entry, tmp_path) and download.present(_hf_entry(), tmp_path)
    done = download.download_models([url_entry, _hf_entry()], tmp_path, offline=False, progress=False)
    assert set(done) == {"tiny-url", "tiny-hf"}


def test_download_models_accepts_ids(tmp_path):
    with pytest.raises(DownloadError, match="clipcap-conceptual-mlp"):
        download.download_models(["clipcap-conceptual-mlp"], tmp_path, offline=True)


def test_sizes_for_listing():
    entries = load_registry()
    assert download.expected_size(entries["sbg-vocabulary"]) == 107881 + 51281
    assert download.expected_size(entries["clip-prefix-flickr8k"]) == 650_000_000  # the registry's guess
    assert download.format_size(None) == "unknown size"
    assert download.format_size(512) == "512 B"
    assert download.format_size(1536) == "1.5 KB"
    assert download.format_size(3 * 1024**3) == "3.0 GB"


def test_offline_reason(monkeypatch):
    monkeypatch.setenv("ICG_OFFLINE", "0")
    assert download.offline_reason() is None
    monkeypatch.setenv("ICG_OFFLINE", "true")
    assert "ICG_OFFLINE" in download.offline_reason()
    assert download.offline_reason(False) is None
    assert download.is_offline(True)


def test_import_is_cheap():
    import subprocess

    code = (
        "import sys, icg.models.download, icg.models.inventory, icg.models.registry, icg.models.paths;"
        "import icg.deps;"
        "bad = [m for m in ('huggingface_hub', 'torch', 'transformers', 'tqdm') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hf_kwargs_fit_the_installed_hub():
    hub = pytest.importorskip("huggingface_hub")
    import inspect

    signature = inspect.signature(hub.hf_hub_download)
    signature.bind(repo_id="a/b", filename="f", local_dir="/tmp/x", revision="main")
    assert callable(hub.get_hf_file_metadata) and callable(hub.hf_hub_url)


def check_install_block(text: str, urls: list[str], command: str) -> None:
    """``text`` is a one-line headline and an indented "install by hand" block naming each of ``urls``
    once, one a line, and the import ``command``."""
    headline, *block = text.strip("\n").splitlines()
    assert block and all(line.startswith("  ") for line in block), text
    assert len(headline) <= 160, headline
    assert block[0].strip().startswith("install by hand")
    for url in urls:
        assert text.count(url) == 1, (url, text)
    assert any(line.strip() == f"then run: {command}" for line in block), text
    assert all(line.count("://") <= 1 for line in block), text  # one address a line


def test_sizes_the_registry_guesses_read_as_approximate():
    entries = load_registry()
    plan = download.plan_download(
        [entries["clip-prefix-flickr8k"], entries["sbg-vocabulary"]], "/nonexistent-icg-models", offline=True
    )
    assert plan.total == "about 620.0 MB"  # 650 MB guessed + 155 KB known
    everything = download.plan_download(load_registry(), "/nonexistent-icg-models", offline=True)
    assert "unknown" not in everything.total
    exact = download.SizeTotal(1536)
    assert str(exact) == "1.5 KB"
    assert str(exact + download.SizeTotal(unknown=2)) == "1.5 KB + 2 file(s) of unknown size"


def test_every_auto_source_of_the_registry_states_a_size():
    for entry in load_registry().values():
        for source in entry.sources:
            if source.is_auto:
                assert source.size is not None or source.approx_size is not None, (entry.id, source.filename)
