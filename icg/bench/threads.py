"""The threads suite of ``python -m icg bench`` (see ``bench_threads``): how a server thread of the same
process answers while CLIP encodes on the CPU, with every torch thread and with ``icg.threads``'s cap."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from icg.bench.core import BenchContext
from icg.threads import limited_threads

#: Seconds between two probe requests (a page polling for progress does about this, and faster).
PROBE_INTERVAL = 0.02
#: Encoding repeats until it has run this long, so that the probes see enough of it.
LOAD_SECONDS = 3.0


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _probe(url: str, until: threading.Event, minimum: int) -> list[float]:
    """Request ``url`` every ``PROBE_INTERVAL`` seconds until ``until`` is set (at least ``minimum``
    times); the latency of each request in seconds."""
    latencies: list[float] = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    while not until.is_set() or len(latencies) < minimum:
        start = time.perf_counter()
        with opener.open(url, timeout=60) as response:
            response.read()
        latencies.append(time.perf_counter() - start)
        time.sleep(PROBE_INTERVAL)
    return latencies


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def bench_threads(ctx: BenchContext) -> dict[str, Any]:
    """A tiny HTTP server in this process is probed every 20 ms: idle, then while another thread encodes
    images with CLIP with all of torch's threads, then with all but one (the WebUI's default from 4 threads
up). Reports
    the probes' median and 95th-percentile latency and what the cap costs the encoding."""
    if ctx.device.type != "cpu":
        return {"notes": {"threads": "skipped: the thread cap applies to CPU captioning only"}}
    clip = ctx.clip
    n = 2 if ctx.quick else ctx.batch
    pixels = clip.preprocess_images(ctx.images(n))
    clip.encode_images(pixels[:1])  # warm-up
    available = torch.get_num_threads()
    capped = max(1, available - 1)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    serving = threading.Thread(target=server.serve_forever, daemon=True, name="icg-bench-http")
    serving.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        idle = threading.Event()
        idle.set()
        results = {"idle": (_probe(url, idle, 25), None)}
        for label, count in (("all threads", available), ("all but one", capped)):
            results[f"{label} ({count})"] = _under_load(clip, pixels, count, url)
    finally:
        server.shutdown()
        server.server_close()

    rows: dict[str, float] = {}
    notes = []
    for label, (latencies, per_image) in results.items():
        p50, p95 = statistics.median(latencies) * 1000, _p95(latencies) * 1000
        notes.append(f"{label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(latencies)} requests")
        if per_image is not None:
            rows[f"threads: clip encode b{n}, {label}"] = per_image
    full, cap = results[f"all threads ({available})"], results[f"all but one ({capped})"]
    ratios = {
        "threads: http p50 latency, all / all but one": statistics.median(full[0])
        / statistics.median(cap[0]),
        "threads: http p95 latency, all / all but one": _p95(full[0]) / _p95(cap[0]),
        "threads: clip encode time, all but one / all": cap[1] / full[1],
    }
    return {
        "seconds_per_image": rows,
        "ratios": ratios,
        "notes": {"threads (an http probe every 20 ms while CLIP encodes)": "; ".join(notes)},
    }


def _under_load(clip, pixels, count: int, url: str) -> tuple[list[float], float]:
    """Probe latencies while a thread encodes ``pixels`` with ``count`` torch threads (repeatedly, for
    ``LOAD_SECONDS`` at least), and the encoding's seconds per image."""
    done = threading.Event()
    took: list[float] = []

    def encode() -> None:
        try:
            with limited_threads(count):
                start, runs = time.perf_counter(), 0
                while not runs or time.perf_counter() - start < LOAD_SECONDS:
                    clip.encode_images(pixels, batch_size=len(pixels))
                    runs += 1
                took.append((time.perf_counter() - start) / (runs * len(pixels)))
        finally:
            done.set()

    worker = threading.Thread(target=encode, name="icg-bench-encode")
    worker.start()
    latencies = _probe(url, done, 1)
    worker.join()
    return latencies, took[0]
