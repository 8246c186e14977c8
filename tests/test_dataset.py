"""``icg dataset`` on Ray Data: every input kind, both output formats, error rows, resume, a two-node
loopback cluster with a killed model actor, and a killed driver.

Ray is the optional ``scale`` extra: without it these tests skip (the host and Forge environments run
without it), except the ones that check what happens without Ray. One small local Ray instance serves
the in-process tests (2 CPUs, a 100 MB object store); the cluster and the killed driver run in
subprocesses. Stopping points come from the actors' test hook (``ICG_DATASET_HOLD``, see
``icg.dataset.run``), never from timing.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from icg.cli import main
from icg.dataset.shards import committed_shards, read_rows, read_shard
from icg.dataset.sources import remote_key, resolve, webdataset_key
from icg.sinks import read_manifest
from tests.test_batch_cli import model_args
from tests.test_batch_engine import make_images

ROOT = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason='Ray is not installed (the optional "scale" extra: pip install "icg[scale]")'
)
NAMES = ["a.png", "b.jpg", "sub/c.png", "d.png", "e.png"]
WAIT = 600  # seconds: generous bounds on waits for events of a run (a busy 2-core machine is slow)
# Ray starts its workers at nice 15: on a machine kept busy by other processes they then get almost no
# CPU and a run crawls for many minutes. The tests' workers compete at the normal priority (Ray's own job
# manager does the same for its drivers); Ray reads this when a node starts, here and in the nodes the
# tests start with ``ray start``.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(local_ray, tmp_path_factory):
    """One run over ``NAMES`` and a broken file, shared by the tests that check it and compare with it:
    ``(src, out, exit code, what it printed)``."""
    src = tmp_path_factory.mktemp("reference") / "src"
    make_images(src, NAMES)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = src.parent / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = dataset(src, out)
    return src, out, code, printed.getvalue()


def dataset(source, out, *extra: str) -> int:
    return main(
        ["dataset", str(source), "--out", str(out), *model_args("--batch-size", "2", "--no-progress", *extra)]
    )


def by_key(rows) -> dict[str, dict]:
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "every key exactly once"
    return {r["key"]: r for r in rows}


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT) -> None:
    """Wait for ``condition()`` (a file an actor or driver writes), failing after a generous bound or
    as soon as ``proc`` (the run that should make it true) has ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {tail(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_driver(command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    """``command`` in its own session, its stdout and stderr in files under ``logs`` (a pipe could fill
    up and stall it)."""
    logs.mkdir(exist_ok=True)
    with open(logs / "stdout", "wb") as stdout, open(logs / "stderr", "wb") as stderr:
        proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=stdout, stderr=stderr)
    proc.logs = logs
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return (proc.logs / "stderr").read_text(errors="replace")


def tail(proc: subprocess.Popen) -> str:
    return stderr_of(proc)[-3000:]


# ------------------------------------------------------------------------------------- without Ray


def test_without_ray_one_line_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    make_images(tmp_path, ["a.png"])
    code = main(["dataset", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and 'pip install "icg[scale]"' in err


def test_webui_api_and_app_paths_never_import_ray():
    webui = sorted(p.stem for p in (ROOT / "icg" / "webui").glob("*.py") if p.stem != "__init__")
    probe = (
        "import sys\n"
        "import icg, icg.api, icg.cli, icg.webui\n"
        f"for name in {webui!r}: __import__('icg.webui.' + name)\n"
        "icg.cli.build_parser()\n"
        "print('ray' in sys.modules, len([m for m in sys.modules if m.startswith('icg.webui.')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded_ray, webui_modules = out.stdout.split()
    assert loaded_ray == "False"
    assert int(webui_modules) == len(webui)


# ------------------------------------------------------------------------------------- inputs (no Ray)


def test_list_files_resolve_to_keys_and_paths(tmp_path):
    make_images(tmp_path, NAMES)
    (tmp_path / "list.txt").write_text("a.png\nsub/c.png\n\na.png\n", encoding="utf-8")
    with open(tmp_path / "list.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file", "other"], ["b.jpg", "x"], [str(tmp_path / "d.png"), "y"]])
    txt = resolve(str(tmp_path / "list.txt"))
    assert txt.kind == "files" and txt.items == (
        ("a.png", str(tmp_path / "a.png")),
        ("sub/c.png", str(tmp_path / "sub/c.png")),
    )
    listed = resolve(str(tmp_path / "list.csv"), path_column="file")
    assert [k for k, _ in listed.items] == ["b.jpg", str(tmp_path / "d.png")]
    glob = resolve(str(tmp_path / "**" / "*.png"))
    assert sorted(p for _, p in glob.items) == sorted(str(tmp_path / n) for n in NAMES if n.endswith(".png"))
    folder = resolve(str(tmp_path))
    assert [k for k, _ in folder.items] == sorted(NAMES, key=lambda n: n.split("/"))


@pytest.mark.parametrize(
    "make, flags, message",
    [
        (lambda d: d / "nothing", {}, "no such file or folder"),
        (lambda d: (d / "list.csv").write_text("path2\nx\n") and d / "list.csv", {}, "no column 'path'"),
        (lambda d: d / "none-*.jpg", {}, "no files match"),
        (lambda d: "s3://bucket/photos", {"recursive": False}, "--no-recursive applies to local folders"),
    ],
)
def test_bad_inputs_name_the_input(tmp_path, make, flags, message):
    from icg.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve(str(make(tmp_path)), **flags)


def test_webdataset_keys():
    assert webdataset_key("shard/0001.jpg") == "shard/0001"
    assert webdataset_key("abc.seg.png") == "abc"


def test_remote_keys_are_relative_to_the_folder_given():
    assert remote_key("s3://b/photos", "b/photos/sub/a.jpg") == ("sub/a.jpg", "s3://b/photos/sub/a.jpg")
    assert remote_key("s3://b/photos/", "b/photos/a.jpg") == ("a.jpg", "s3://b/photos/a.jpg")
    assert remote_key("gs://b/photos/a.jpg", "b/photos/a.jpg") == ("a.jpg", "gs://b/photos/a.jpg")
    assert remote_key("s3://b/photos", "b/photos-2/a.jpg") == ("b/photos-2/a.jpg", "s3://b/photos-2/a.jpg")


# ------------------------------------------------------------------------------------- with Ray


@needs_ray
@pytest.mark.slow
def test_folder_to_parquet_equals_icg_batch_and_bad_files_are_error_rows(tmp_path, reference):
    src, out, code, printed = reference
    assert code == 1
    assert "done: 5 of 6 images captioned, 1 failed" in printed and "images/s" in printed
    assert "failed: broken.jpg:" in printed
    rows = by_key(read_rows(out))
    assert set(rows) == {*NAMES, "broken.jpg"}
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["caption"] is None
    assert all(rows[n]["error"] is None and rows[n]["caption"] for n in NAMES)
    assert all(rows[n]["prompt"] == rows[n]["caption"].rstrip(".") for n in NAMES)
    assert all(committed.suffix == ".parquet" for committed in committed_shards(out))
    assert json.loads(rows["a.png"]["decoding"])["strategy"] == "greedy"

    manifest = tmp_path / "batch.jsonl"
    main(
        [
            "batch",
            str(src),
            *model_args("--batch-size", "2", "--no-progress", "--no-sidecars", "--manifest", str(manifest)),
        ]
    )
    batch = {r["path"]: r["caption"] for r in read_manifest(manifest) if r.get("caption")}
    assert batch == {n: rows[n]["caption"] for n in NAMES}


@needs_ray
@pytest.mark.slow
def test_resume_skips_committed_shards_and_ignores_half_written_ones(tmp_path, local_ray, capsys):
    src = tmp_path / "src"
    make_images(src, NAMES)
    out = tmp_path / "out"
    assert dataset(src, out, "--shard-rows", "2") == 0
    shards = committed_shards(out)
    assert len(shards) == 3
    first = {p.name: p.stat().st_mtime_ns for p in shards}
    last = shards[-1]  # drop the last shard, as if the job had died before committing it ...
    lost_keys = {r["key"] for r in read_shard(last)}
    last.unlink()
    # ... and leave a half-written shard holding every key under a temp name, as a killed write does.
    (out / f".{last.name}.0123456789ab.tmp").write_bytes(b"PAR1 half written")
    capsys.readouterr()
    assert dataset(src, out, "--shard-rows", "2") == 0
    printed = capsys.readouterr().out
    assert f"done: {len(lost_keys)} of {len(lost_keys)} images captioned" in printed
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = by_key(read_rows(out))
    assert set(again) == set(NAMES)
    assert {p.name: p.stat().st_mtime_ns for p in committed_shards(out) if p.name in first} == {
        n: t for n, t in first.items() if n != last.name
    }
    assert dataset(src, out) == 0  # nothing left: nothing captioned, nothing written
    assert "done: 0 of 0 images captioned, 0 failed, 5 already done" in capsys.readouterr().out


@needs_ray
@pytest.mark.slow
def test_path_list_to_jsonl_with_sidecars(tmp_path, local_ray, capsys):
    src = tmp_path / "src"
    make_images(src, NAMES)
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({"file": [str(src / "a.png"), str(src / "sub/c.png"), str(src / "gone.png")]}), listed
    )
    out = tmp_path / "out"
    (src / "a.txt").write_text("old caption\n", encoding="utf-8")
    code = dataset(
        listed, out, "--path-column", "file", "--format", "jsonl", "--sidecars", "--policy", "append"
    )
    assert code == 1  # gone.png does not exist
    rows = by_key(read_rows(out))
    assert all(p.suffix == ".jsonl" for p in committed_shards(out))
    assert set(rows) == {str(src / "a.png"), str(src / "sub/c.png"), str(src / "gone.png")}
    assert rows[str(src / "gone.png")]["error"]
    a = rows[str(src / "a.png")]
    assert (src / "a.txt").read_text(encoding="utf-8") == f"old caption\n{a['prompt']}\n"
    assert (src / "sub" / "c.txt").read_text(encoding="utf-8") == rows[str(src / "sub/c.png")][
        "prompt"
    ] + "\n"
    assert "caption files: 1 append, 1 new" in capsys.readouterr().out


@needs_ray
@pytest.mark.slow
def test_parquet_bytes_and_webdataset_shards_caption_like_files(tmp_path, reference):
    src = tmp_path / "src"
    paths = make_images(src, NAMES[:3])  # the same images as the reference run's (seeded by name)
    expected = {r["key"]: r["caption"] for r in read_rows(reference[1]) if r["key"] in NAMES[:3]}
    assert len(expected) == 3 and all(expected.values())

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    keys = [p.relative_to(src).as_posix() for p in paths] + ["junk"]
    blobs = [p.read_bytes() for p in paths] + [b"not an image"]
    pq.write_table(pa.table({"id": keys, "jpeg": blobs}), data / "images.parquet")
    out = tmp_path / "out-parquet"
    assert dataset(data, out, "--bytes-column", "jpeg", "--key-column", "id") == 1
    rows = by_key(read_rows(out))
    assert {k: r["caption"] for k, r in rows.items() if k != "junk"} == expected
    assert rows["junk"]["error"] and rows["junk"]["caption"] is None

    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, p in enumerate(paths):
            for name, blob in ((f"s{i}{p.suffix}", p.read_bytes()), (f"s{i}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    out = tmp_path / "out-tar"
    assert dataset(shard, out) == 0
    rows = by_key(read_rows(out))
    assert {k: r["caption"] for k, r in rows.items()} == {
        f"s{i}": expected[p.relative_to(src).as_posix()] for i, p in enumerate(paths)
    }


@pytest.fixture
def s3_bucket():
    """A local S3 server (moto's) holding an empty bucket ``images``: ``(boto3 client, environment)``,
    the environment being what a process needs to reach it (pyarrow reads ``AWS_ENDPOINT_URL``)."""
    moto_server = pytest.importorskip(
        "moto.server", reason='moto is not installed (the "test-s3" extra: pip install "icg[test-s3]")'
    )
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket="images")
        yield client, env
    finally:
        server.stop()


@needs_ray
@pytest.mark.slow
def test_s3_folder_captions_like_the_local_folder_and_resumes(tmp_path, reference, s3_bucket):
    client, s3_env = s3_bucket
    src = tmp_path / "src"
    paths = make_images(src, NAMES[:3])  # the reference run's images (seeded by name)
    expected = {r["key"]: r["caption"] for r in read_rows(reference[1]) if r["key"] in NAMES[:3]}
    for path in paths:
        key = f"photos/{path.relative_to(src).as_posix()}"
        client.put_object(Bucket="images", Key=key, Body=path.read_bytes())
    client.put_object(Bucket="images", Key="photos/notes.txt", Body=b"not an image")
    client.put_object(Bucket="images", Key="elsewhere/x.png", Body=paths[0].read_bytes())
    # A driver of its own (with its own local Ray), so that Ray's workers start with the S3 settings.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **s3_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = tmp_path / "out"

    def run(source: str) -> subprocess.CompletedProcess:
        command = icg_command(source, out, "--num-cpus", "2", "--json")  # type: ignore[arg-type]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=WAIT * 2)

    done = run("s3://images/photos")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = by_key(read_rows(out))
    assert {k: r["caption"] for k, r in rows.items()} == expected  # keys relative to the folder
    assert {r["path"] for r in rows.values()} == {f"s3://images/photos/{k}" for k in expected}

    again = run("s3://images/photos/")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert (summary["captioned"], summary["skipped"]) == (0, 3)

    missing = run("s3://no-such-bucket/photos")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith(
        "icg: error: input s3://no-such-bucket/photos: no such file or folder"
    )


@needs_ray
@pytest.mark.slow
def test_an_input_ray_cannot_list_is_one_line_naming_it(tmp_path, local_ray, monkeypatch, capsys):
    """What pyarrow raises while Ray lists an input (credentials, permissions, an endpoint) is the
    input's one-line error, not a traceback; nothing is written."""
    from icg.dataset.sources import Source

    def refuse(self, ray, done, block_rows=8):
        raise OSError("When listing objects under key 'photos' in bucket 'b':\nAWS Error ACCESS_DENIED")

    monkeypatch.setattr(Source, "dataset", refuse)
    src = tmp_path / "src"
    make_images(src, NAMES[:1])
    out = tmp_path / "out"
    assert dataset(src, out) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"icg: error: input {src}: cannot be read (AWS Error ACCESS_DENIED)"
    )
    assert committed_shards(out) == []


# ------------------------------------------------------------------------------------- clusters and faults


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOISE = "noise a Ray worker printed to its stdout"
#: Makes every Ray worker print ``NOISE`` to its stdout once it has imported ICG's pipeline (so after
#: Ray set up its log forwarding), as Ray's own workers and raylet print lines the driver forwards.
NOISY_SITECUSTOMIZE = f"""
import sys

if sys.argv and sys.argv[0].endswith("default_worker.py"):
    def _noise(event, args, _done=[]):
        if event == "import" and args[0] == "icg.pipeline" and not _done:
            _done.append(True)
            print({NOISE!r}, flush=True)

    sys.addaudithook(_noise)
"""


def subprocess_env(hold: Path, noisy: bool = False) -> dict[str, str]:
    """The environment of a driver or node we start: the hold folder, and with ``noisy`` a
    sitecustomize (``NOISY_SITECUSTOMIZE``) on the path of every Python process it starts."""
    env = dict(os.environ, ICG_DATASET_HOLD=str(hold), RAY_AUTH_MODE="disabled")
    paths = [str(ROOT), env.get("PYTHONPATH")]
    if noisy:
        site = hold.parent / "noisy-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE, encoding="utf-8")
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """End a process we started in its own session, and everything it started there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)


def icg_command(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "icg",
        "dataset",
        str(source),
        "--out",
        str(out),
        *model_args("--batch-size", "2", "--no-progress", *extra),
    ]


@needs_ray
@pytest.mark.slow
def test_two_node_cluster_both_caption_and_a_killed_actor_is_replaced(tmp_path):
    src = tmp_path / "src"
    names = [f"img{i:02d}.png" for i in range(24)]
    make_images(src, names)
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold-after").write_text("1")  # each actor captions one batch, then waits for "go"
    env = subprocess_env(hold, noisy=True)
    port = free_port()
    store = str(80 * 2**20)
    nodes = []
    try:
        for args in (
            ["--head", "--port", str(port), "--include-dashboard", "false"],
            ["--address", f"127.0.0.1:{port}"],
        ):
            node = subprocess.Popen(
                [
                    ray_cli(),
                    "start",
                    "--block",
                    "--num-cpus",
                    "1",
                    "--object-store-memory",
                    store,
                    "--node-ip-address",
                    "127.0.0.1",
                    "--disable-usage-stats",
                    *args,
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            nodes.append(node)
            if len(nodes) == 1:
                wait_for(lambda: _cluster_nodes(port, env) >= 1, "the head node")
        wait_for(lambda: _cluster_nodes(port, env) == 2, "the second node to join")
        out = tmp_path / "out"
        driver = start_driver(
            icg_command(
                src, out, "--address", f"127.0.0.1:{port}", "--actors", "2", "--actor-cpus", "0.75", "--json"
            ),
            env,
            tmp_path / "driver",
        )
        try:
            wait_for(lambda: len(list(hold.glob("held-*"))) == 2, "both actors holding at batch 2", driver)
            # Ray forwards its workers' output to the driver: on stderr, where errors stay visible.
            wait_for(lambda: NOISE in stderr_of(driver), "the workers' output on the driver's stderr", driver)
            victim = int(sorted(hold.glob("held-*"))[0].name.split("-")[1])
            os.kill(victim, signal.SIGKILL)  # one model actor dies mid-run ...
            (hold / "go").write_text("")  # ... and the other goes on; Ray restarts the dead one
            driver.wait(timeout=WAIT * 2)
        finally:
            if driver.poll() is None:
                kill_group(driver)
        assert driver.returncode == 0, tail(driver)
        summary = json.loads((driver.logs / "stdout").read_text())  # ICG's summary and nothing else
        rows = by_key(read_rows(out))
        assert set(rows) == set(names) and all(r["error"] is None for r in rows.values())
        assert len({r["node"] for r in rows.values()}) == 2 and len(summary["nodes"]) == 2
        workers = {r["worker"] for r in rows.values()}
        assert f"{socket.gethostname()}:{victim}" in workers  # it captioned its first batch before dying
        assert len(workers) == 3  # the two actors, and the one that replaced the dead one
    finally:
        for node in reversed(nodes):
            kill_group(node)


def _cluster_nodes(port: int, env: dict[str, str]) -> int:
    """Alive nodes of the loopback cluster (0 while it is not up)."""
    probe = (
        "import ray\n"
        f"ray.init(address='127.0.0.1:{port}', log_to_driver=False, logging_level='ERROR')\n"
        "print(sum(1 for n in ray.nodes() if n['Alive']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=WAIT
    )
    return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout.split() else 0


@needs_ray
@pytest.mark.slow
def test_killed_driver_resumes_with_every_key_once(tmp_path, local_ray):
    src = tmp_path / "src"
    names = [f"img{i:02d}.png" for i in range(8)]
    make_images(src, names)
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold-after").write_text("2")  # two batches go through, then the actor waits forever
    out = tmp_path / "out"
    driver = start_driver(
        icg_command(src, out, "--shard-rows", "2", "--num-cpus", "2"),
        subprocess_env(hold),
        tmp_path / "driver",
    )
    try:
        wait_for(lambda: any(hold.glob("held-*")), "the actor to hold at its third batch", driver)
        wait_for(lambda: committed_shards(out), "a committed shard", driver)
    finally:
        kill_group(driver)  # the driver dies (with its local Ray) mid-run
    first = {p.name: p.stat().st_mtime_ns for p in committed_shards(out)}
    done_before = {r["key"] for r in read_rows(out)}
    assert len(done_before) == 2 * len(first) < len(names)  # shards of 2 rows; the run was cut short
    assert dataset(src, out, "--shard-rows", "2") == 0  # the same command again (this test's Ray)
    rows = by_key(read_rows(out))
    assert set(rows) == set(names)
    assert {p.name: p.stat().st_mtime_ns for p in committed_shards(out) if p.name in first} == first
