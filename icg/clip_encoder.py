"""The CLIP encoder: the only module that talks to open_clip.

One ``ClipEncoder`` wraps an open_clip model, its image transform and its tokenizer. Images and texts
go in as batches; L2-normalised float32 features come out on the CPU, whatever device and dtype the
model runs in, so everything downstream (keyword scoring, re-ranking, sidecars) sees one format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from icg.config import ClipSpec
from icg.errors import CheckpointError, ConfigError, UnsafePickleError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_tensor_file(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a tensors-only state dict: safetensors (memory-mapped), or a torch file loaded with
    ``weights_only=True``; ``mmap``: a torch zip file memory-mapped too, for models loaded to caption
    (``icg.models.fastload``), so its tensors are not read and copied up front."""
    import torch

    from icg.models.fastload import legacy

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif mmap and not legacy() and _is_zip(path):
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text advises weights_only=False: never pass that on
        raise _refused(path, str(err)) from None
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
    return state


def _is_zip(path: Path) -> bool:
    """True for torch's zip format, the one ``torch.load(mmap=True)`` reads (not the legacy format)."""
    import zipfile

    return zipfile.is_zipfile(path)


def _refused(path: Path, text: str) -> CheckpointError:
    """The error for a torch file the tensors-only reader refused, in ICG's words: torch's own text
    advises ``weights_only=False`` (running the file's code), which ICG never repeats."""
    found = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", text)
    if found:
        return UnsafePickleError(
            f"{path}: refused: the file holds code (Python objects such as {found.group(1)}), not only "
            "tensors, so it was not loaded"
        )
    reason = text.partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
    reason = " ".join(reason.split()) or "not a tensors-only pickle"
    return CheckpointError(f"{path}: not a readable weights file ({reason})")


def spec_from_folder(folder: str | Path) -> ClipSpec:
    """A local CLIP folder holds one open_clip model config (``*.json``) and one weights file."""
    folder = Path(folder)
    configs = sorted(folder.glob("*.json"))
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if len(configs) != 1 or len(weights) != 1:
        raise ConfigError(
            f"{folder}: a local CLIP folder needs exactly one open_clip config (*.json) and one weights "
            f"file ({', '.join(WEIGHT_SUFFIXES)}); found {len(configs)} and {len(weights)}"
        )
    return ClipSpec(
        arch=configs[0].stem,
        pretrained=None,
        quick_gelu=False,
        config_path=str(configs[0]),
        weights_path=str(weights[0]),
    )


def _model_config(spec: ClipSpec) -> dict[str, Any]:
    """The open_clip model config of ``spec`` (a local ``config_path`` is checked and registered with
    open_clip first, so ``create_model`` finds it by ``spec.arch``)."""
    import open_clip

    if spec.config_path:
        config = Path(spec.config_path)
        if not config.is_file():
            raise ConfigError(f"{config}: open_clip model config not found")
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config}: not a readable JSON model config ({err})") from err
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ConfigError(f"{config}: an open_clip model config needs embed_dim, vision_cfg, text_cfg")
        from icg.captioners.limits import check_open_clip_config

        check_open_clip_config(cfg, str(config))  # sane sizes before open_clip builds anything
        open_clip.add_model_config(config)
    cfg = open_clip.get_model_config(spec.arch)
    if cfg is None:
        raise ConfigError(f"open_clip has no model config named {spec.arch!r}")
    return cfg


def preprocess_config(spec: ClipSpec) -> dict[str, Any]:
    """How ``spec``'s CLIP preprocesses an image, from its config alone (no weights): a plain dict of
    ``image_transform`` arguments (``size``, ``mean``, ``std``, and on open_clip 3 ``resize_mode``,
    ``interpolation``, ``fill_color``), built as open_clip builds it: its defaults, then the model
    config's ``preprocess_cfg``, then the pretrained tag's (only when open_clip loads the tag's
    weights itself), with the tower's image size. Plain values, so it travels to Ray tasks as is."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = _model_config(spec)
    found: dict[str, Any] = dict(cfg.get("preprocess_cfg") or {})
    pretrained = None if spec.weights_path else spec.pretrained
    if pretrained:
        found.update({k: v for k, v in (get_pretrained_cfg(spec.arch, pretrained) or {}).items()})
    size = cfg["vision_cfg"].get("image_size", 224)
    out: dict[str, Any] = {"size": list(size) if isinstance(size, (list, tuple)) else int(size)}
    for key in ("mean", "std", "resize_mode", "interpolation", "fill_color"):
        if found.get(key) is not None:
            out[key] = list(found[key]) if isinstance(found[key], (list, tuple)) else found[key]
    return out


def image_transform(config: dict[str, Any]):
    """The eval-time image transform (PIL image -> ``(3, H, W)`` float tensor) for a
    ``preprocess_config``: open_clip's own ``image_transform``, given the arguments this open_clip
    release takes (2.20 has no ``resize_mode``/``interpolation`` and always resizes the shortest side
    bicubically, as its own ``create_model_and_transforms`` does)."""
    import inspect

    import open_clip

    accepted = inspect.signature(open_clip.image_transform).parameters
    size = config["size"]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "size"}
    return open_clip.image_transform(
        tuple(size) if isinstance(size, list) else size,
        is_train=False,
        **{k: v for k, v in kwargs.items() if k in accepted},
    )


class ClipEncoder:
    """open_clip model + preprocess + tokenizer. Use ``ClipEncoder.load(spec)`` to build one."""

    def __init__(self, model, preprocess, tokenizer, *, device, dtype, model_id: str) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.model_id = model_id

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls, spec: ClipSpec, *, device: Any = "auto", dtype: Any = "auto", cache_dir: str | Path | None = None
    ) -> ClipEncoder:
        import open_clip

        from icg.devices import resolve_device, resolve_dtype
        from icg.models.fastload import load_into, no_init

        device = resolve_device(device)
        dtype = resolve_dtype(device, dtype)
        preprocess = image_transform(preprocess_config(spec))
        pretrained = None if spec.weights_path else spec.pretrained
        log.info("loading CLIP %s on %s (%s)", spec.id, device, dtype)
        try:
            with without_weights_warning(pretrained is None), no_init(bool(spec.weights_path)):
                model = open_clip.create_model(
                    spec.arch,
                    pretrained=pretrained,
                    force_quick_gelu=spec.quick_gelu,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                )
        except RuntimeError as err:
            raise ConfigError(f"open_clip could not build {spec.arch!r}: {err}") from err
        if spec.weights_path:
            state = load_tensor_file(spec.weights_path, mmap=True)
            try:
                load_into(model, state, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"{spec.weights_path}: does not fit CLIP {spec.arch}: {err}") from err
        model = model.to(device=device, dtype=dtype)
        tokenizer = open_clip.get_tokenizer(spec.arch)
        return cls(model, preprocess, tokenizer, device=device, dtype=dtype, model_id=spec.id)

    # -------------------------------------------------------------------------------------- properties
    @property
    def feature_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None:
            return int(proj.shape[-1]) if not hasattr(proj, "out_features") else int(proj.out_features)
        return int(self.model.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model, "context_length", 77))

    def to(self, device) -> ClipEncoder:
        """Move the model (e.g. to the CPU to free GPU memory); dtype stays."""
        self.model.to(device)
        self.device = device
        return self

    # -------------------------------------------------------------------------------------- encoding
    def preprocess_images(self, images: Sequence[Any]):
        """PIL images -> one float tensor batch on the CPU (safe to call from worker threads)."""
        import torch

        return torch.stack([self.preprocess(image) for image in images])

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, *, normalize: bool = True):
        """PIL images (or an already preprocessed ``(B, 3, H, W)`` tensor) -> ``(B, D)`` float32 features,
        L2-normalised unless ``normalize`` is False (the original ClipCap models were trained on raw ones)."""
        import torch

        outs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = chunk if isinstance(chunk, torch.Tensor) else self.preprocess_images(chunk)
            outs.append(self._encode_pixels(pixels, normalize))
        return torch.cat(outs) if outs else torch.empty(0, self.feature_dim)

    def _encode_pixels(self, pixels, normalize: bool = True):
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return _normalise(feats) if normalize else feats.float().cpu()

    def tokenize(self, texts: Sequence[str]):
        return self.tokenizer(list(texts))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256):
        """Texts -> ``(N, D)`` float32 features.

        Each batch runs only as many positions as its longest text needs. CLIP's text tower is causal
        and reads its feature at the end-of-text token, so the positions after it never change the
        result; skipping them makes short label prompts many times cheaper than padding to 77.
        """
        import torch

        texts = list(texts)
        if not texts:
            return torch.empty(0, self.feature_dim)
        tokens = self.tokenize(texts)
        # Sort by length so each batch is trimmed as short as its members allow.
        lengths = tokens.argmax(dim=-1) + 1
        order = torch.argsort(lengths, descending=True, stable=True)
        feats = torch.empty(len(texts), self.feature_dim)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokens[idx]
            width = int(lengths[idx].max())
            feats[idx] = self._encode_tokens(batch, width)
        return feats

    def _encode_tokens(self, tokens, width: int):
        import torch

        with torch.inference_mode(), _trimmed_text_context(self.model, width) as trimmed:
            toks = tokens[:, :width] if trimmed else tokens
            out = self.model.encode_text(toks.to(self.device))
        return _normalise(out)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def without_weights_warning(active: bool = True) -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded" warning when we load the weights ourselves."""
    if not active:
        yield
        return
    filt = _DropMessage("No pretrained weights loaded")
    root = logging.getLogger()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


def _normalise(feats):
    import torch

    feats = feats.float().cpu()
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


@contextlib.contextmanager
def _trimmed_text_context(model, width: int) -> Iterator[bool]:
    """Temporarily cut the text tower's positional table and causal mask to ``width`` positions.

    Yields whether trimming applies (a plain open_clip ``CLIP`` with the OpenAI text tower); for other
    towers it yields False and the caller feeds full-length tokens. Callers hold the model manager's
    lock, so no other thread sees the trimmed model.
    """
    pos = getattr(model, "positional_embedding", None)
    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", "argmax")
    if pos is None or mask is None or pool != "argmax" or width >= pos.shape[0]:
        yield False
        return
    import torch

    full_pos, full_mask = model.positional_embedding, model.attn_mask
    try:
        model.positional_embedding = torch.nn.Parameter(full_pos[:width], requires_grad=False)
        model.attn_mask = full_mask[:width, :width]
        yield True
    finally:
        model.positional_embedding = full_pos
        model.attn_mask = full_mask
