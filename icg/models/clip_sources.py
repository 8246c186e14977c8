"""Using the CLIP weights another tool already keeps on this machine, instead of a second download.

Where they are (searched read-only, in this order):

* the folders given (the WebUI's ``--clip-models-path``: where its Interrogate CLIP keeps ``ViT-L-14.pt``);
* ``~/.cache/clip``: the ``clip`` package's cache (the WebUI's default) and open_clip's URL cache, holding
  OpenAI's TorchScript archives (``ViT-L-14.pt``, fp16);
* the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``):
  ``models--<org>--<repo>/snapshots/<revision>/open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin`` of the entry's Hugging Face repo (what open_clip >= 2.23 and
  clip-interrogator fetch), the revision ``refs/main`` names first.

A file is the model when its content says so, never its name: its tensor names and shapes equal those of
the entry's CLIP (``expected_shapes``: open_clip's model built on the meta device from the entry's
architecture, so any config, the tiny test ones too, runs the same check), and an OpenAI archive must
also have the sha256 OpenAI published for it where one is known (the folder name in open_clip's download
URL). Other files are skipped with a log line.

Installing (``use_local_copy``) writes only into the model's own folder: an open_clip state dict is
referenced in place by a pointer file (``icg.models.pointers``); an OpenAI archive is read without
running its code (``icg.models.openai_archive``) and converted once into ``open_clip_model.safetensors``
beside a pointer to it. Nothing is ever written into another tool's cache.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.errors import CheckpointError, IcgError

logger = logging.getLogger(__name__)

CONVERTED_NAME = "open_clip_model.safetensors"
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_CACHE = Path("~/.cache/clip")
ARCHIVE = "OpenAI TorchScript archive"
STATE_DICT = "open_clip state dict"


# ------------------------------------------------------------------------------------------ where
def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub computes it from the environment."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var, "").strip():
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def search_dirs(extra: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """The folders searched for OpenAI archives: ``extra`` (the WebUI's ``--clip-models-path``), then
    ``~/.cache/clip``; each once."""
    out: list[Path] = []
    for folder in [*extra, CLIP_CACHE]:
        path = Path(folder).expanduser()
        if path not in out:
            out.append(path)
    return out


@dataclass(frozen=True)
class Candidate:
    path: Path
    where: str  # for people: which tool's cache


def _snapshots(repo_dir: Path) -> list[Path]:
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    order: list[Path] = []
    try:
        main = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        main = ""
    if main and "/" not in main and main not in (".", ".."):
        order.append(snapshots / main)
    order += [p for p in sorted(snapshots.iterdir()) if p not in order]
    return [p for p in order if p.is_dir()]


def candidates(
    hf_repos: Sequence[str], extra_dirs: Sequence[str | os.PathLike[str]] = ()
) -> Iterator[Candidate]:
    """Files that may be the CLIP: every ``*.pt`` in the archive folders, then the open_clip weights of
    ``hf_repos`` in the Hugging Face cache."""
    for folder in search_dirs(extra_dirs):
        if folder.is_dir():
            for path in sorted(folder.glob("*.pt")):
                if path.is_file():
                    yield Candidate(path, f"the CLIP cache {folder}")
    hub = hf_hub_cache()
    for repo in hf_repos:
        for snapshot in _snapshots(hub / ("models--" + repo.replace("/", "--"))):
            for name in OPEN_CLIP_FILES:
                path = snapshot / name
                if path.is_file():
                    yield Candidate(path, f"the Hugging Face cache ({repo})")


# ------------------------------------------------------------------------------------------ what
@functools.lru_cache(maxsize=8)
def _expected(arch: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import open_clip
    import torch

    from icg.clip_encoder import without_weights_warning

    if open_clip.get_model_config(arch) is None:
        raise CheckpointError(f"open_clip does not know the CLIP architecture {arch!r}")
    with without_weights_warning(), torch.no_grad():
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_shapes(clip: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the CLIP ``clip`` (``arch``) as open_clip builds it (on the meta
    device: no memory, no weights)."""
    return dict(_expected(str(clip.get("arch"))))


def known_sha256(clip: Mapping[str, Any]) -> str | None:
    """The sha256 OpenAI published for this CLIP's archive: the folder of open_clip's download URL."""
    try:
        from open_clip.pretrained import get_pretrained_url

        url = get_pretrained_url(str(clip.get("arch")), str(clip.get("pretrained"))) or ""
    except Exception:  # noqa: BLE001 - no open_clip, or a tag it does not know: nothing known
        return None
    parts = url.split("/")
    if "openaipublic" in url and len(parts) > 2 and len(parts[-2]) == 64:
        return parts[-2].lower()
    return None


def shape_mismatch(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], *, extra_ok: bool
) -> str | None:
    """Why ``shapes`` are not those of the expected CLIP (None when they are). ``extra_ok``: tensors
    the CLIP does not have are allowed (an OpenAI archive also holds e.g. ``attn_mask``)."""
    missing = [k for k in expected if k not in shapes]
    if missing:
        return f"{len(missing)} tensor(s) missing (e.g. {missing[0]})"
    wrong = [k for k in expected if tuple(shapes[k]) != tuple(expected[k])]
    if wrong:
        k = wrong[0]
        return (
            f"{len(wrong)} tensor(s) of another shape "
            f"(e.g. {k}: {list(shapes[k])}, expected {list(expected[k])})"
        )
    extra = [k for k in shapes if k not in expected]
    if extra and not extra_ok:
        return f"{len(extra)} tensor(s) the CLIP does not have (e.g. {extra[0]})"
    return None


@dataclass(frozen=True)
class Identified:
    path: Path
    layout: str  # ARCHIVE or STATE_DICT


def file_shapes(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """``(layout, shapes)`` of a weights file, read without loading its tensors where the format allows."""
    from icg.captioners.kinds import tensor_shapes
    from icg.models import openai_archive

    if path.suffix == ".safetensors":
        return STATE_DICT, tensor_shapes(path)
    if openai_archive.is_torch_zip(path):
        try:
            scripted, shapes = openai_archive.tensor_shapes(path)
            return (ARCHIVE if scripted else STATE_DICT), shapes
        except openai_archive.ArchiveFormatError as err:  # torch's own tensors-only reader below
            logger.debug("%s: %s", path, err)
    from icg.clip_encoder import load_tensor_file  # a legacy or unusual torch file: read it

    return STATE_DICT, {k: tuple(v.shape) for k, v in load_tensor_file(path).items()}


def identify(path: Path, clip: Mapping[str, Any]) -> Identified:
    """Check that ``path`` holds the CLIP ``clip`` (by its tensors, and an archive by the published
    sha256 where one is known); ``CheckpointError`` (``UnsafePickleError`` for code) saying why not."""
    from icg.models.download import sha256_file

    layout, shapes = file_shapes(path)
    why = shape_mismatch(shapes, expected_shapes(clip), extra_ok=layout == ARCHIVE)
    if why is not None:
        raise CheckpointError(f"{path}: not CLIP {clip.get('arch')} weights: {why}")
    sha = known_sha256(clip) if layout == ARCHIVE else None
    if sha is not None:
        actual = sha256_file(path)
        if actual != sha:
            raise CheckpointError(
                f"{path}: not OpenAI's {clip.get('arch')} archive: sha256 {actual}, published {sha}"
            )
    return Identified(path, layout)


# ------------------------------------------------------------------------------------------ install
def convert_archive(path: Path, clip: Mapping[str, Any], out: Path) -> str:
    """Read the OpenAI archive ``path`` (restricted reader, else ``torch.jit.load``) and write the CLIP's
    tensors as ``out`` (safetensors, the archive's dtypes). Returns which reader was used."""
    from safetensors.torch import save_file

    from icg.models import openai_archive

    expected = expected_shapes(clip)
    tensors, reader = openai_archive.load_tensors(path, expected)
    why = shape_mismatch({k: tuple(v.shape) for k, v in tensors.items()}, expected, extra_ok=False)
    if why is not None:
        raise CheckpointError(f"{path}: not CLIP {clip.get('arch')} weights: {why}")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return reader


def install_file(found: Identified, clip: Mapping[str, Any], folder: Path, name: str, where: str) -> str:
    """Make ``found`` the model file ``name`` in ``folder``: a pointer to it in place (open_clip state
    dict), or a converted copy beside a pointer (OpenAI archive). Returns where the weights came from."""
    from icg.models.paths import ensure_dir
    from icg.models.pointers import write_pointer

    ensure_dir(folder)
    if found.layout == STATE_DICT:
        source = f"{where}: {found.path}"
        write_pointer(folder, name, found.path, source=source, fmt=STATE_DICT)
        return source
    reader = convert_archive(found.path, clip, folder / CONVERTED_NAME)
    source = f"{where}: {found.path} (converted; read by {reader})"
    write_pointer(folder, name, folder / CONVERTED_NAME, source=source, fmt=STATE_DICT)
    return source


def use_local_copy(entry: Any, folder: Path, extra_dirs: Sequence[str | os.PathLike[str]] = ()) -> str | None:
    """Install the CLIP ``entry`` from a copy another tool keeps (see the module docstring) into its
    ``folder``; returns where the weights came from, or None when no copy was found."""
    if len(entry.required_files) != 1 or entry.clip is None:
        return None
    clip = dict(entry.clip)
    try:
        expected_shapes(clip)
    except (ImportError, IcgError, RuntimeError) as err:
        logger.debug("can't tell the tensors of CLIP %s: %s", clip.get("arch"), err)
        return None
    repos = [s.repo for s in entry.auto_sources if s.kind == "hf" and s.repo]
    for candidate in candidates(repos, extra_dirs):
        try:
            found = identify(candidate.path, clip)
        except (IcgError, OSError) as err:
            logger.info("Not using %s for %s: %s", candidate.path, entry.id, err)
            continue
        try:
            source = install_file(found, clip, folder, entry.required_files[0], candidate.where)
        except (IcgError, OSError) as err:
            logger.warning("Could not use %s for %s: %s", candidate.path, entry.id, err)
            continue
        logger.info("Using the CLIP %s already on this machine, from %s (no download)", entry.id, source)
        return source
    return None
