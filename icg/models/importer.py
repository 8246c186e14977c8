"""Importing model files into the models folder, and converting downloaded originals.

``import_model`` (``python -m icg import``) takes files a person fetched by hand (the seed's MediaFire
links, the original ClipCap checkpoints) or trained, and hands them to their kind's ``import_files``
(``icg.captioners.kinds``), which checks their tensor shapes against the kind and converts them; this
module installs the result as ``<models folder>/<id>/``. The kinds' own modules say what each accepts
(``icg.captioners.prefix_kind``: a predecessor ``.pt`` state_dict, read with
``torch.load(weights_only=True)``, or an ICG folder; ``icg.sbg.kind``: a GPT-2 folder, the vocabulary
pickles; ``icg.models.resource_kinds``: a tokenizer's or CLIP's registry files).

When the id is a registry id, the registry's facts (CLIP, feature normalisation, prefix length, decoding)
apply. The import is atomic: everything is written into a hidden temporary folder inside the models
folder, checked, then renamed into place; an existing model folder is replaced only with ``force``.

``convert_downloaded`` is the conversion ``icg.models.download`` runs once after fetching an entry with
``convert_from`` (its kind's ``convert``). Nothing here writes a pickle. Heavy libraries are imported
inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.captioners import kinds
from icg.captioners.kinds import ImportJob, read_json
from icg.errors import ConfigError, IcgError, ModelNotFound
from icg.models.loading import clip_label, parse_clip
from icg.models.paths import ensure_dir, model_dir
from icg.models.registry import RESERVED_IDS, ModelEntry, load_registry

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def import_kinds() -> tuple[str, ...]:
    """Kinds a user's own model may have: those that import and that a folder can be recognised as
    (registry ids may also be of the other kinds, e.g. ``tokenizer`` or ``clip``)."""
    return tuple(k.name for k in kinds.kinds() if k.import_files is not None and k.detect is not None)


@dataclass(frozen=True)
class ImportResult:
    """What ``import_model`` installed."""

    id: str
    kind: str
    folder: Path
    files: tuple[str, ...]
    details: str  # one line for a person: what was recognised and checked
    replaced: bool = False  # an existing folder was replaced (``force``)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "folder": str(self.folder), "files": list(self.files)}


# ------------------------------------------------------------------------------------------ helpers
def clip_feature_dim(clip: Mapping[str, Any]) -> int | None:
    """The feature width of a CLIP (ClipSpec fields); None when it can't be told here.

    A local CLIP reads its open_clip config; an architecture name asks open_clip's bundled configs, and
    one open_clip does not know is refused."""
    if clip.get("config_path"):
        data = read_json(Path(str(clip["config_path"])))
        dim = data.get("embed_dim") if isinstance(data, dict) else None
        return int(dim) if isinstance(dim, int) else None
    arch = str(clip.get("arch") or "")
    if arch.startswith("hf-hub:"):
        return None
    try:
        import open_clip
    except ImportError:
        return None
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ConfigError(f"open_clip does not know the CLIP architecture {arch!r}")
    return int(config["embed_dim"])


def full_clip(clip: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(clip)
    if "quick_gelu" not in out:
        out["quick_gelu"] = out.get("pretrained") == "openai"
    return out


def _check_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or model_id in RESERVED_IDS:
        raise ConfigError(
            f"{model_id!r} can't be a model id: use up to 64 lowercase letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (and not {', '.join(sorted(RESERVED_IDS))})"
        )


def single_source(paths: Sequence[Path], kind: str) -> Path:
    if len(paths) != 1:
        raise ConfigError(f"a {kind} import takes one file or folder, got {len(paths)}")
    return paths[0]


def copy_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


# ------------------------------------------------------------------------------------------ kinds
def detect_import_kind(paths: Sequence[Path]) -> str:
    """Which kind of model ``paths`` hold, from their contents (tensor names, config fields)."""
    return kinds.recognise([Path(p) for p in paths]).name


def tokenizer_ref(value: str) -> str:
    """A tokenizer reference to store: an absolute folder path or an id as given."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_dir() else value


# ------------------------------------------------------------------------------------------ import
def _describe_existing(dest: Path) -> str:
    names = sorted(p.name for p in dest.iterdir())[:4] if dest.is_dir() else []
    return ", ".join(names) or "empty"


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` (created with the usual permissions, unlike ``mkdtemp``)."""
    for _ in range(100):
        path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"can't create a temporary folder in {parent}")


def usual_modes(folder: Path) -> None:
    """Give the files in ``folder`` the permissions a new file gets here (the umask), not the private
    0600 that temporary-file writers use, so a shared models folder stays readable."""
    probe = folder / ".mode-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.chmod(mode)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _commit(tmp: Path, dest: Path, force: bool) -> bool:
    """Rename the finished ``tmp`` folder to ``dest``; replace ``dest`` only with ``force`` (an empty
    folder is no model: it is replaced without)."""
    if _is_empty_dir(dest):
        with contextlib.suppress(OSError):
            dest.rmdir()
    if dest.exists():
        if not force:
            raise ConfigError(
                f"{dest} already exists ({_describe_existing(dest)}); add --force to replace it"
            )
        old = dest.with_name(f".replaced-{dest.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.rename(tmp, dest)
    except OSError as err:
        raise ConfigError(f"can't install into {dest}: {err}") from err
    return False


def import_model(
    sources: Iterable[str | os.PathLike[str]],
    model_id: str,
    root: str | os.PathLike[str],
    *,
    kind: str | None = None,
    clip: str | None = None,
    normalize: bool | None = None,
    n_head: int | None = None,
    mapper_heads: int | None = None,
    tokenizer: str | None = None,
    vocabulary: str | None = None,
    keep_original: bool = False,
    force: bool = False,
    registry: Mapping[str, ModelEntry] | None = None,
) -> ImportResult:
    """Check, convert and install ``sources`` as ``<root>/<model_id>``; see the module docstring.

    ``kind`` defaults to the registry entry's kind, else to what the files hold. ``clip`` (ARCH/PRETRAINED,
    a CLIP id or a CLIP folder), ``normalize``, ``n_head``/``mapper_heads`` (invisible in the shapes),
    ``tokenizer`` and ``vocabulary`` (SBG) describe a user's own model; for a registry id the registry's
    facts apply and a contradicting option is refused. ``keep_original`` also copies the converted
    originals into the model folder. Raises ``IcgError`` subclasses naming the file and the problem.
    """
    entries = registry if registry is not None else load_registry()
    paths = [Path(p).expanduser() for p in sources]
    if not paths:
        raise ConfigError("nothing to import: give a file or folder")
    for path in paths:
        if not path.exists():
            raise ModelNotFound(f"{path}: no such file or folder")
    _check_id(model_id)
    entry = entries.get(model_id)
    if entry is not None:
        if kind is not None and kind != entry.kind:
            raise ConfigError(f"{model_id!r} is a {entry.kind} in the model registry, not a {kind}")
        kind = entry.kind
        _refuse_contradictions(entry, clip, normalize)
    elif kind is None:
        kind = detect_import_kind(paths)
    elif kind not in import_kinds():
        raise ConfigError(f"unknown kind {kind!r}; one of {', '.join(import_kinds())}")
    root_path = Path(root)
    dest = model_dir(model_id, root_path)
    if dest.exists() and not force and not _is_empty_dir(dest):  # fail early; checked again at the rename
        raise ConfigError(f"{dest} already exists ({_describe_existing(dest)}); add --force to replace it")
    ensure_dir(root_path)
    job = ImportJob(
        entry=entry,
        root=root_path,
        registry=entries,
        originals=[p for p in paths if p.is_file()],
        clip=clip,
        normalize=normalize,
        n_head=n_head,
        mapper_heads=mapper_heads,
        tokenizer=tokenizer,
        vocabulary=vocabulary,
    )
    import_files = kinds.get(kind).import_files
    if import_files is None:
        raise ConfigError(f"a {kind} model can't be imported")
    tmp = make_temp_dir(root_path, f".import-{model_id}-")
    try:
        details = import_files(paths, tmp, job)
        if keep_original:
            for original in job.originals:
                if not (tmp / original.name).exists():
                    copy_file(original, tmp / original.name)
        usual_modes(tmp)
        files = tuple(sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()))
        replaced = _commit(tmp, dest, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("imported %s as %s into %s: %s", ", ".join(map(str, paths)), model_id, dest, details)
    return ImportResult(model_id, kind, dest, files, details, replaced)


def _refuse_contradictions(entry: ModelEntry, clip: str | None, normalize: bool | None) -> None:
    if clip is not None:
        given = parse_clip(clip)
        facts = dict(entry.clip or {})
        if (given.get("arch"), given.get("pretrained")) != (facts.get("arch"), facts.get("pretrained")):
            raise ConfigError(
                f"{entry.id!r} is registered with CLIP {clip_label(facts)}; --clip {clip} contradicts it "
                "(import it under an id of your own to use another CLIP)"
            )
    if normalize is not None and normalize != entry.normalize:
        raise ConfigError(
            f"{entry.id!r} is registered with {'normalised' if entry.normalize else 'raw'} CLIP features; "
            "import it under an id of your own to change that"
        )


# ------------------------------------------------------------------------------------------ downloads
def convert_downloaded(entry: ModelEntry, folder: Path, *, keep_original: bool = False) -> None:
    """Convert the downloaded ``convert_from`` files of ``entry`` in ``folder`` into its ``files``, then
    delete the originals unless ``keep_original``. The installed files appear only when complete (the
    config last), so a failure leaves the model "not present" and the originals in place."""
    folder = Path(folder)
    conversion = kinds.get(entry.kind).convert
    if conversion is None:
        raise IcgError(f"{entry.id}: no converter for a {entry.kind} model")
    tmp = make_temp_dir(folder, ".convert-")
    try:
        conversion.run(entry, folder, tmp)
        usual_modes(tmp)
        for name in sorted(conversion.outputs, key=lambda n: n.endswith(".json")):  # configs last
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s of %s in %s", ", ".join(entry.convert_from), entry.id, folder)
    if not keep_original:
        for name in entry.convert_from:
            (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # huggingface_hub's note about the downloaded file
                (folder / ".cache" / "huggingface" / "download" / f"{name}.metadata").unlink()
