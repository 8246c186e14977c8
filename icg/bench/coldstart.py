"""``python -m icg bench --suite coldstart``: time to the first caption, in fresh processes.

Random-weight models are written once, in the formats ICG installs, into a cache folder
(``<user cache>/icg/bench/coldstart-v<N>-<size>``, or ``$ICG_BENCH_CACHE``; never re-written when
complete): at ``--size real`` the registry's layout (``clip-vit-l-14-openai/open_clip_pytorch_model.bin``,
``clip-prefix-flickr8k/`` and ``sbg-flickr8k/`` as safetensors + JSON, ``gpt2-tokenizer/`` with a
synthetic 50257-token byte-level BPE, ``sbg-vocabulary/`` with a vocabulary of the published sizes); at
``--size tiny`` the test models, named by path.

Each measured run is a fresh ``python -m icg caption IMAGE --models-dir CACHE ...`` (CLIP-prefix, then
SBG) or a fresh process that builds the standalone app and calls its caption handler once, timed from
the spawn to the first caption on its stdout. ``$ICG_PHASES`` (``icg.phases``) makes the process mark
when the CLI started, when the models were ready and when the caption was printed, and list the modules
imported by each mark; importing the modules new at each mark is then timed apart in another fresh
process. Phases per run:

- ``startup``: spawn -> the CLI's ``main`` (the interpreter and ``icg.cli``);
- ``import``: importing what the command imported after that (timed apart), while loading its models
  and while captioning (SBG, for one, imports some of its code only when it first captions);
- ``load``: the CLI's start -> models ready, less what was imported then (reading and building models);
- ``work``: models ready -> caption printed, less what was imported then (image decoding, CLIP,
  decoding);
- ``total``: spawn -> caption printed.

The app also has ``build app`` (its imports, gradio's included, and building the Blocks); its ``load``
starts at the built app.

Every path runs twice per repeat, today's loading (``ICG_LOAD_LEGACY=1``, ``icg.models.fastload``) and
the new one, interleaved so both see the same machine; a first run of each command is not timed (it
fills the OS file cache and, for SBG, the label bank cache that any installed model has).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger(__name__)

#: Bumped whenever the cached models' files change, so an old cache is never read.
CACHE_VERSION = 1
CACHE_ENV = "ICG_BENCH_CACHE"
COMPLETE = "complete.json"
PATHS = ("legacy", "new")

_APP_CHILD = """
import sys
from icg.phases import mark
mark("cli", modules=True)
import json
from icg.app import AppService, create_app
from icg.models.manager import ModelManager, RuntimeConfig
image, model, runtime, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
manager = ModelManager(RuntimeConfig(**runtime))
service = AppService(manager, models=[model], default_model=model)
create_app(manager, models=[model], default_model=model, service=service)
mark("app", modules=True)
print(service.caption(image, model, {"max_new_tokens": tokens}).caption, flush=True)
mark("printed", modules=True)
"""

_IMPORT_CHILD = """
import importlib, json, sys, time, warnings
warnings.simplefilter("ignore")
groups = json.load(open(sys.argv[1], encoding="utf-8"))
seconds = []
for names in groups:
    start = time.perf_counter()
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:
                pass
    seconds.append(time.perf_counter() - start)
print(json.dumps(seconds[1:]))
"""


# ------------------------------------------------------------------------------------------ the models
def cache_folder(size: str) -> Path:
    from icg.models.paths import user_cache_dir

    root = Path(os.environ.get(CACHE_ENV) or user_cache_dir() / "bench")
    return root / f"coldstart-v{CACHE_VERSION}-{size}"


def ensure_models(size: str, folder: Path | None = None) -> Path:
    """The cache folder with every model written (written now, once, when it is not complete)."""
    folder = folder or cache_folder(size)
    if (folder / COMPLETE).is_file():
        return folder
    import shutil

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        logger.info("writing the cold-start models (%s) into %s", size, folder)
        (_write_real if size == "real" else _write_tiny)(tmp)
        from icg.bench.folder import write_jpegs

        write_jpegs(tmp, 1)
        (tmp / COMPLETE).write_text(json.dumps({"version": CACHE_VERSION, "size": size}), encoding="utf-8")
        if folder.exists():  # an incomplete earlier attempt
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_real(out: Path) -> None:
    import open_clip
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from icg.bench.core import BenchContext
    from icg.bench.sbg import synthetic_vocabulary
    from icg.captioners.mappers import MapperConfig, build_mapper
    from icg.captioners.prefix import PrefixCaptionModel, PrefixModelConfig, build_lm, save_prefix_model
    from icg.clip_encoder import without_weights_warning
    from icg.models.loading import DEFAULT_CLIP

    torch.manual_seed(0)
    with without_weights_warning():
        clip = open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=True)
    (out / "clip-vit-l-14-openai").mkdir()
    torch.save(clip.state_dict(), out / "clip-vit-l-14-openai" / "open_clip_pytorch_model.bin")
    del clip
    lm_cfg = BenchContext.lm_config(SimpleNamespace(size="real"))  # GPT-2 124M, as the other suites
    write_gpt2_tokenizer(out / "gpt2-tokenizer", lm_cfg["vocab_size"])
    mapper_cfg = MapperConfig("mlp", 768, 768, 10, hidden_dim=768 * 5)
    model = PrefixCaptionModel(build_mapper(mapper_cfg), build_lm(lm_cfg), 10)
    cfg = PrefixModelConfig(mapper=mapper_cfg, lm={**lm_cfg, "tie_word_embeddings": True}, clip=DEFAULT_CLIP)
    save_prefix_model(model, cfg, out / "clip-prefix-flickr8k")
    del model
    GPT2LMHeadModel(GPT2Config(**lm_cfg)).save_pretrained(str(out / "sbg-flickr8k"), safe_serialization=True)
    (out / "sbg-vocabulary").mkdir()
    synthetic_vocabulary().save_json(out / "sbg-vocabulary" / "vocabulary.json")


def _write_tiny(out: Path) -> None:
    from icg.bench.sbg import synthetic_vocabulary
    from icg.captioners.prefix import config_from_state, model_from_state, save_prefix_model
    from icg.tiny import tiny_clip_spec, tiny_lm, tiny_prefix_state, tiny_tokenizer

    tiny_clip_spec(out / "clip")
    tok = tiny_tokenizer(out / "tokenizer")
    state = tiny_prefix_state(tok)
    cfg = config_from_state(state, source="tiny")
    save_prefix_model(model_from_state(state, cfg, source="tiny"), cfg, out / "prefix")
    tiny_lm(tok, seed=1).save_pretrained(str(out / "sbg"), safe_serialization=True)
    (out / "vocab").mkdir()
    synthetic_vocabulary().save_json(out / "vocab" / "vocabulary.json")


def write_gpt2_tokenizer(folder: Path, size: int = 50257, seed: int = 0) -> None:
    """A byte-level BPE with GPT-2's file set and size (``size`` tokens, the last ``<|endoftext|>``):
    the 256 byte symbols, then merges of random pairs of lower-case tokens (no real tokenizer is
    available offline; loading it costs what loading GPT-2's does)."""
    import random

    from tokenizers import ByteLevelBPETokenizer, pre_tokenizers
    from transformers import GPT2Config

    rng = random.Random(seed)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    symbols = sorted(alphabet)
    vocab = {s: i for i, s in enumerate(symbols)}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = [("\u0120", c) for c in letters]  # "Ġ" marks a leading space, as in GPT-2
    pool = letters + ["\u0120" + c for c in letters]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    while len(vocab) < size - 1:
        a, b = rng.choice(pool), rng.choice(pool)
        if b.startswith("\u0120") or len(a) + len(b) > 12 or a + b in vocab:
            continue
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        pool.append(a + b)
    eos = "<|endoftext|>"
    vocab[eos] = len(vocab)
    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer(vocab, merges)
    bpe.add_special_tokens([eos])
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}), encoding="utf-8")
    GPT2Config(vocab_size=size).to_json_file(str(folder / "config.json"))


# ------------------------------------------------------------------------------------------ the commands
def prefix_setup(folder: Path, size: str) -> tuple[str, dict[str, str]]:
    """The CLIP-prefix model of the cache ``folder`` (a registry id at the real size, found in the
    folder as a models folder; a path otherwise) and the runtime settings naming its CLIP and tokenizer
    (none at the real size: the registry's defaults)."""
    if size == "real":
        return "clip-prefix-flickr8k", {}
    return str(folder / "prefix"), {"clip": str(folder / "clip"), "tokenizer": str(folder / "tokenizer")}


def commands(folder: Path, size: str, tokens: int) -> dict[str, list[str]]:
    """name -> the arguments of one cold start (``caption``, ``sbg``: the CLI; ``app``: the app child),
    each caption at most ``tokens`` long (random weights never stop on their own; a trained model's
    first caption is about 15 tokens), SBG seeded."""
    image = str(folder / "photo000.jpg")
    base = ["--models-dir", str(folder), "--device", "cpu"]
    prefix, runtime = prefix_setup(folder, size)
    sbg = "sbg-flickr8k" if size == "real" else str(folder / "sbg")
    if runtime:
        base += ["--clip", runtime["clip"], "--tokenizer", runtime["tokenizer"]]
    cli = [sys.executable, "-m", "icg", "caption", image, *base, "--max-new-tokens", str(tokens)]
    vocab = [] if size == "real" else ["--vocabulary", str(folder / "vocab")]
    app_runtime = {"device": "cpu", "models_dir": str(folder), **runtime}
    return {
        "caption": [*cli, "--model", prefix],
        "sbg": [*cli, "--model", sbg, "--seed", "0", *vocab],
        "app": [sys.executable, "-c", _APP_CHILD, image, prefix, json.dumps(app_runtime), str(tokens)],
    }


def _env(path: str, phases: Path) -> dict[str, str]:
    from icg.models.fastload import LEGACY_ENV

    env = dict(os.environ)
    env.pop(LEGACY_ENV, None)
    if path == "legacy":
        env[LEGACY_ENV] = "1"
    env["ICG_PHASES"] = str(phases)
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this same icg
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def cold_start(argv: list[str], path: str, workdir: Path) -> dict[str, Any]:
    """One fresh process: its phase marks (unix times), the modules it imported, its caption."""
    phases = Path(tempfile.mkstemp(prefix="phases-", dir=workdir)[1])
    start = time.time()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(path, phases)
    )
    first = proc.stdout.readline()
    printed = time.time()
    out, err = proc.communicate()
    if proc.returncode != 0 or not first.strip():
        raise RuntimeError(f"cold start failed ({' '.join(argv[:5])} ...): {err.strip()[-2000:]}")
    marks: dict[str, Any] = {"spawn": start, "stdout": printed, "caption": first.strip()}
    last = ""
    for line in phases.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("\t")
        if name == "modules":  # the modules imported by the mark just before (its first time)
            marks.setdefault("modules", {}).setdefault(last, json.loads(value))
        else:
            marks.setdefault(name, float(value))  # the first mark of each name
            last = name
    return marks


def import_seconds(*snapshots: list[str], workdir: Path) -> list[float]:
    """Seconds a fresh process takes to import what each snapshot of ``sys.modules`` (taken at the
    marks, in order) adds to the ones before it: one figure per snapshot after the first, whose modules
    are imported first and not timed (they are the startup's)."""
    seen: set[str] = set()
    groups = []
    for snapshot in snapshots:
        groups.append([n for n in snapshot if n not in seen and "__main__" not in n])
        seen.update(snapshot)
    listing = workdir / "modules.json"
    listing.write_text(json.dumps(groups), encoding="utf-8")
    env = _env("new", workdir / "unused")
    env.pop("ICG_PHASES")
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHILD, str(listing)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def run_imports(marks: dict[str, Any], workdir: Path) -> tuple[float, float]:
    """``(before models ready, after)``: the import seconds (``import_seconds``) of what one run imported
    while loading its models (from the CLI's start, or the built app) and while captioning."""
    modules = marks["modules"]
    start = "app" if "app" in modules else "cli"
    load, work = import_seconds(modules[start], modules["models"], modules["printed"], workdir=workdir)
    return load, work


def split(marks: dict[str, Any], imports: tuple[float, float]) -> dict[str, float]:
    """The phases of one run (see the module docstring); ``app``: the app build, apart. ``imports``:
    ``run_imports``; they are taken out of ``load`` and ``work`` and shown as ``import``."""
    load_imports, work_imports = imports
    rows = {"total": marks["stdout"] - marks["spawn"], "startup": marks["cli"] - marks["spawn"]}
    ready = marks["models"]
    loading_from = marks["cli"]
    if "app" in marks:  # gradio and the app's own imports are in the build
        rows["build app"] = marks["app"] - marks["cli"]
        loading_from = marks["app"]
    rows["import"] = load_imports + work_imports
    rows["load"] = max(0.0, ready - loading_from - load_imports)
    rows["work"] = max(0.0, marks["stdout"] - ready - work_imports)
    return rows


# ------------------------------------------------------------------------------------------ the suite
def bench_coldstart(ctx) -> dict[str, Any]:
    """Time to the first caption, today's loading against the new one; see the module docstring."""
    size = "real" if ctx.size == "real" else "tiny"
    folder = ensure_models(size)
    repeats = 1 if ctx.quick else 3
    rows: dict[str, float] = {}
    ratios: dict[str, float] = {}
    checks: dict[str, bool] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="icg-bench-coldstart-") as tmp:
        workdir = Path(tmp)
        for name, argv in commands(folder, size, ctx.tokens).items():
            cold_start(argv, "legacy", workdir)  # fills the file cache (and SBG's label bank cache)
            runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
            for _ in range(repeats):
                for path in PATHS:
                    runs[path].append(cold_start(argv, path, workdir))
            table: dict[str, dict[str, float]] = {}
            for path in PATHS:
                imports = run_imports(runs[path][0], workdir)
                splits = [split(m, imports) for m in runs[path]]
                table[path] = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
                for phase, seconds in table[path].items():
                    rows[f"coldstart {name} {path}: {phase}"] = seconds
            legacy, new = table["legacy"]["total"], table["new"]["total"]
            ratios[f"coldstart {name}: legacy / new (total)"] = legacy / new
            captions = {p: {r["caption"] for r in runs[p]} for p in PATHS}
            checks[f"coldstart {name}: same caption on both loading paths"] = (
                len(captions["legacy"]) == 1 and captions["legacy"] == captions["new"]
            )
            notes[f"coldstart {name}"] = side_by_side(name, table)
            logger.info("coldstart %s", notes[f"coldstart {name}"])
    notes["coldstart models"] = str(folder)
    return {"seconds_per_image": rows, "ratios": ratios, "checks": checks, "notes": notes}


def side_by_side(name: str, table: dict[str, dict[str, float]]) -> str:
    """``phase legacy -> new`` for one command, in seconds."""
    parts = [f"{k} {table['legacy'][k]:.2f} -> {table['new'][k]:.2f} s" for k in table["legacy"]]
    return f"{name}: " + ", ".join(parts)
