"""The SBG captioner: CLIP keywords -> a GPT-2 writes N candidate captions -> CLIP re-ranks them.

Per batch of images (``caption_features``):

1. keywords: ``KeywordSelector`` over the ``LabelBank`` (built on first use from the shared CLIP's text
   tower and cached on disk under ``<models_dir>/cache/``), so this step is matrix products only;
2. generate: every image's prompt ``"kw1, kw2, ... ###"``, left-padded into one batch, and ``num_samples``
   continuations per image drawn in ONE ``generate`` call, seeded with a ``torch.Generator``; each
   distinct prompt runs through the model once and its KV cache is shared by its candidates;
3. each continuation is cut at the separator and at the first ``"."`` (decoding stops at the first token
   that contains the stop text, which yields exactly the text that cutting a longer sample would);
4. re-rank: the candidates of all images are encoded in one ``encode_texts`` call and ordered by cosine
   similarity with their image (``score_kind="clip"``).

``caption_keywords`` captions keywords a person typed (no image: candidates ordered by the language
model's own mean log-probability, ``score_kind="logprob"``).

Fidelity knobs (``style``):

- ``"published"`` reproduces the predecessor for evaluation: the caption is ``text.strip() + " ."`` and all
  N candidates are kept as sampled.
- ``"clean"`` (the default for prompts and people): a tidy sentence (``icg.text.finish_caption``), empty and
  repeated candidates dropped, typed keywords deduplicated.
- Keywords: the predecessor ranks its final keywords through a dict keyed by keyword, so its prompts
  never repeat a keyword. ``KeywordConfig(dedupe=True)`` is therefore the published behaviour and both
  styles use it; the issue's "duplicate keywords are kept" does not describe the predecessor's output.
- Re-ranking encodes each candidate as shown (``published``: ``"a dog runs ."``, as the predecessor did).
- Length: the predecessor sampled up to ``max_length=256`` tokens (prompt included) and then cut at the
  first "."; decoding here stops at that "." and allows ``max_new_tokens=40`` new tokens, far beyond a
  Flickr8k caption.

Seeds: with ``decoding.seed=None`` a seed is drawn and recorded in every result (``seed`` and
``decoding["seed"]``); an image captioned again with that decoding gets the same candidates, alone or
in any batch (each image draws from its own generator seeded with it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from icg.captioners.generation import Generated, generate
from icg.captioners.result import Candidate, CaptionResult, Keyword
from icg.config import ClipSpec, DecodingConfig, from_dict, to_dict
from icg.errors import CheckpointError, ConfigError
from icg.options import CaptionOptions
from icg.sbg.bank import LabelBank
from icg.sbg.keywords import SEPARATOR, KeywordConfig, KeywordSelector
from icg.sbg.vocab import Vocabulary
from icg.text import CAPTION_STYLES, cut_caption, decode_tokens, finish_caption, token_texts

if TYPE_CHECKING:
    from icg.models.loading import ResolvedModel
    from icg.models.manager import ModelManager

logger = logging.getLogger(__name__)

#: SBG decoding defaults: candidates are samples (top-k 50, temperature 1), as the published model's
#: config turns on sampling in Hugging Face pipelines; 5 candidates; a caption ends at the first ".".
SBG_DECODING = DecodingConfig(
    strategy="sample", num_samples=5, top_k=50, temperature=1.0, max_new_tokens=40, stop="."
)
DEFAULT_STYLE = "clean"
#: The step recorded for keywords a person gave (typed or edited) instead of the selection.
USER_STEP = "user"

def check_style(style: str) -> str:
    if style not in CAPTION_STYLES:
        raise ConfigError(f"caption style must be one of {', '.join(CAPTION_STYLES)}, not {style!r}")
    return style


def parse_keywords(keywords: Sequence[str] | str) -> list[str]:
    """``"dog, grass"`` or ``["dog", " grass "]`` -> ``["dog", "grass"]`` (empty entries dropped)."""
    items = keywords.split(",") if isinstance(keywords, str) else list(keywords)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"keywords must be strings, got {type(item).__name__} {item!r}")
        item = " ".join(item.split())
        if item:
            out.append(item)
    return out


def _dedupe(words: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for word in words:
        key = word.casefold()
        if key not in seen:
            seen.add(key)
            out.append(word)
    return out


class _SharedClipText:
    """The bank's text encoder: asks the provider for the (shared) CLIP on every call, so the bank never
    keeps a CLIP alive that the model manager has replaced or unloaded."""

    def __init__(self, provider: Callable[[], Any]) -> None:
        self.provider = provider

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.provider().encode_texts(texts)


class SbgCaptioner:
    """Selective blind guessing over CLIP image features (``caption_features``) or typed keywords
    (``caption_keywords``).

    ``clip`` is a zero-argument callable returning the CLIP encoder to use for text (the model manager's
    shared one: ``lambda: manager.clip(spec)``); it is called only when text must be encoded (building the
    label bank, bare-word features, re-ranking). ``clip_spec`` is a ``ClipSpec`` or a zero-argument
    callable that resolves it on first use. ``cache_dir`` holds the label-bank cache (None: memory only);
    ``bank`` gives a ready ``LabelBank`` instead (benchmarks, tests).
    """

    kind = "sbg"
    normalize = True  # the keyword selection and re-ranking compare L2-normalised features
    #: Each distinct prompt runs once and its KV cache serves all its candidates; False runs the prompt
    #: once per candidate (the older path, kept for the bench's side-by-side: the same candidates).
    share_prompts = True

    def __init__(
        self,
        lm,
        tokenizer,
        vocabulary: Vocabulary,
        *,
        model_id: str,
        clip: Callable[[], Any],
        clip_spec: ClipSpec | Callable[[], ClipSpec] | None = None,
        decoding: DecodingConfig | None = None,
        style: str = DEFAULT_STYLE,
        keyword_config: KeywordConfig | None = None,
        cache_dir: str | Path | None = None,
        bank: LabelBank | None = None,
    ) -> None:
        self.lm = lm.eval()
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.model_id = model_id
        self._clip = clip
        self._clip_spec = clip_spec
        self.decoding = decoding or SBG_DECODING
        self.style = check_style(style)
        self.keyword_config = keyword_config or KeywordConfig()
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._bank = bank
        self._selector: KeywordSelector | None = None
        self._lock = threading.RLock()
        self._stop_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------------------------ plumbing
    @property
    def clip_spec(self) -> ClipSpec | None:
        """The CLIP this model's keywords and re-ranking use (resolved on first access)."""
        if callable(self._clip_spec):
            with self._lock:
                if callable(self._clip_spec):
                    self._clip_spec = self._clip_spec()
        return self._clip_spec

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def to(self, device) -> SbgCaptioner:
        """Move the language model (the label bank stays on the CPU: it is scored there)."""
        self.lm.to(device)
        return self

    @property
    def bank(self) -> LabelBank:
        """The label-feature bank, built (or read from the disk cache) on first use."""
        with self._lock:
            if self._bank is None:
                encoder = self._clip()
                clip_id = getattr(encoder, "model_id", None) or getattr(self.clip_spec, "id", None) or "clip"
                start = time.perf_counter()
                self._bank = LabelBank.build(
                    self.vocabulary, _SharedClipText(self._clip), clip_id, self.cache_dir
                )
                logger.info("SBG label bank for %s ready in %.2f s", clip_id, time.perf_counter() - start)
            return self._bank

    @property
    def selector(self) -> KeywordSelector:
        with self._lock:
            if self._selector is None:
                self._selector = KeywordSelector(self.bank, self.keyword_config)
            return self._selector

    @property
    def bank_ready(self) -> bool:
        return self._bank is not None

    # ------------------------------------------------------------------------------------ captioning
    def caption_features(
        self,
        features: torch.Tensor,
        decoding: DecodingConfig | None = None,
        options: CaptionOptions | None = None,
        *,
        per_image_keywords: Sequence[Sequence[str]] | None = None,
    ) -> list[CaptionResult]:
        """``(B, D)`` L2-normalised CLIP image features -> one ``CaptionResult`` per image.

        ``options.keywords`` replaces the selection for every image (``per_image_keywords``: one list per
        image), kept in the given order and scored against the image; ``options.force`` / ``ban`` steer
        the selection (or edit the given keywords); ``options.style`` overrides ``self.style``.
        """
        options = options or CaptionOptions()
        style = check_style(options.style or self.style)
        force, ban = options.force, options.ban
        keywords = per_image_keywords if per_image_keywords is not None else options.keywords
        cfg, seed = self._config(decoding)
        feats = self._as_batch(features)
        batch = feats.shape[0]
        if batch == 0:
            return []
        timings: dict[str, float] = {}
        if keywords is None and not self.bank_ready:
            start = time.perf_counter()
            _ = self.selector
            timings["bank"] = time.perf_counter() - start

        start = time.perf_counter()
        if keywords is None:
            selections = self.selector.select(feats, force=force, ban=ban)
            chosen = [[Keyword(k.text, k.score, k.step) for k in s.keywords] for s in selections]
        else:
            given = self._per_image(keywords, batch)
            chosen = [
                self._score_given(feats[b], self._edit(given[b], force, ban, style)) for b in range(batch)
            ]
        timings["keywords"] = time.perf_counter() - start

        start = time.perf_counter()
        samples, kept = self._sample([[k.text for k in kws] for kws in chosen], cfg, seed)
        chosen = [kws[:n] for kws, n in zip(chosen, kept)]
        timings["generate"] = time.perf_counter() - start

        start = time.perf_counter()
        # Candidates are encoded as shown (one call for every distinct text of every image).
        texts = [[finish_caption(text, style) for text, _ in row] for row in samples]
        unique = list(dict.fromkeys(t for row in texts for t in row))
        index = {t: i for i, t in enumerate(unique)}
        text_feats = self._clip().encode_texts(unique).float()
        image_feats = feats.to(text_feats.device, text_feats.dtype)
        results = []
        for b in range(batch):
            rows = text_feats[torch.tensor([index[t] for t in texts[b]], dtype=torch.long)]
            scores = (rows @ image_feats[b]).tolist()
            results.append(self._result(chosen[b], texts[b], scores, "clip", cfg, seed, style))
        timings["rerank"] = time.perf_counter() - start
        per_image = {name: seconds / batch for name, seconds in timings.items()}
        for result in results:
            result.timings = dict(per_image)
        return results

    def caption_keywords(
        self,
        keywords: Sequence[str] | str,
        decoding: DecodingConfig | None = None,
        image_features: torch.Tensor | None = None,
        options: CaptionOptions | None = None,
    ) -> CaptionResult:
        """Caption keywords a person typed or edited (``"dog, grass"`` or a list), kept in their order;
        ``options`` give the style and the words to force or ban.

        With ``image_features`` (``(D,)`` or ``(1, D)``) the candidates are re-ranked by CLIP as usual.
        Without an image no re-ranking is possible: candidates are ordered by the language model's mean
        log-probability per token (``score_kind="logprob"``) and CLIP is never loaded.
        """
        options = options or CaptionOptions()
        words = parse_keywords(keywords)
        if image_features is not None:
            feats = self._as_batch(image_features)
            if feats.shape[0] != 1:
                raise ValueError("caption_keywords takes the features of one image")
            (result,) = self.caption_features(feats, decoding, options, per_image_keywords=[words])
            return result
        style = check_style(options.style or self.style)
        cfg, seed = self._config(decoding)
        words = self._edit(words, options.force, options.ban, style)
        start = time.perf_counter()
        (row,), (kept,) = self._sample([words], cfg, seed)
        words = words[:kept]
        elapsed = time.perf_counter() - start
        texts, scores = [finish_caption(text, style) for text, _ in row], [g.score for _, g in row]
        # Without an image, the keywords have nothing to be scored against: score 0.
        chosen = [Keyword(w, 0.0, USER_STEP) for w in words]
        result = self._result(chosen, texts, scores, "logprob", cfg, seed, style)
        result.timings = {"keywords": 0.0, "generate": elapsed}
        return result

    # ------------------------------------------------------------------------------------ keywords
    def _as_batch(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.ndim not in (1, 2):
            raise ValueError("image features must be a (D,) or (B, D) tensor")
        feats = features.detach().reshape(-1, features.shape[-1]).float().cpu()
        norms = feats.norm(dim=-1, keepdim=True)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):  # scoring compares unit vectors
            feats = feats / norms.clamp_min(1e-12)
        return feats

    @staticmethod
    def _per_image(keywords, batch: int) -> list[list[str]]:
        if isinstance(keywords, str) or all(isinstance(k, str) for k in keywords):
            return [parse_keywords(keywords)] * batch
        rows = [parse_keywords(k) for k in keywords]
        if len(rows) != batch:
            raise ValueError(f"{len(rows)} keyword lists for {batch} images")
        return rows

    @staticmethod
    def _edit(words: list[str], force: Iterable[str], ban: Iterable[str], style: str) -> list[str]:
        """Typed keywords with ``ban`` removed and ``force`` appended; deduplicated in the clean style."""
        banned = {" ".join(b.split()).casefold() for b in ban}
        words = [w for w in words if w.casefold() not in banned]
        present = {w.casefold() for w in words}
        words += [f for f in parse_keywords(list(force)) if f.casefold() not in present]
        return _dedupe(words) if style == "clean" else words

    def _score_given(self, image: torch.Tensor, words: list[str]) -> list[Keyword]:
        """Given keywords, in their order, scored like step 5 (softmax over them against the image)."""
        if not words:
            return []
        # the bank's bare-word cache when it is built; typed keywords alone never make it build
        rows = self.bank.word_features(words) if self.bank_ready else self._clip().encode_texts(words)
        rows = rows.to(image.device, torch.float32)
        probs = (self.keyword_config.logit_scale * rows @ image).softmax(-1).tolist()
        return [Keyword(w, p, USER_STEP) for w, p in zip(words, probs)]

    # ------------------------------------------------------------------------------------ generation
    def _config(self, decoding: DecodingConfig | None) -> tuple[DecodingConfig, int | None]:
        cfg = decoding or self.decoding
        seed = cfg.seed
        if seed is None and cfg.strategy == "sample":
            seed = secrets.randbelow(2**31)
            cfg = cfg.replace(seed=seed)
        return cfg, seed

    def prompt(self, keywords: Sequence[str]) -> str:
        """The generator prompt: ``"kw1, kw2, ... ###"`` (the predecessor's exact format)."""
        return f"{', '.join(keywords)} {SEPARATOR}"

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return 0 if pad is None else int(pad)

    def _prompt_ids(self, keywords: list[str], max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt's token ids and how many keywords it holds: trailing (least relevant) keywords are
        dropped when prompt + ``max_new_tokens`` would exceed the model's positions."""
        positions = int(getattr(self.lm.config, "n_positions", 1024) or 1024)
        limit = positions - max_new_tokens
        if limit < 1:
            raise ConfigError(
                f"{self.model_id}: max_new_tokens={max_new_tokens} leaves no room for the prompt "
                f"(the model reads at most {positions} tokens)"
            )
        words = list(keywords)
        while True:
            ids = self.tokenizer(self.prompt(words), add_special_tokens=False)["input_ids"]
            if len(ids) <= limit or not words:
                break
            words.pop()  # the least relevant keyword: the selection orders best first
        if len(words) < len(keywords):
            logger.warning(
                "SBG prompt too long for %s: kept %d of %d keywords", self.model_id, len(words), len(keywords)
            )
        if len(ids) > limit:
            raise ConfigError(
                f"{self.model_id}: the prompt {self.prompt(words)!r} takes {len(ids)} tokens; with "
                f"max_new_tokens={max_new_tokens} the model (at most {positions} tokens) has no room"
            )
        return ids, len(words)

    def stop_ids(self, cfg: DecodingConfig) -> list[int]:
        """Every token whose text contains the stop text (so generation ends exactly where the caption
        is cut), plus end-of-text when ``stop_at_eos``."""
        ids: list[int] = []
        if cfg.stop:
            if cfg.stop not in self._stop_cache:
                pieces = token_texts(self.tokenizer)
                self._stop_cache[cfg.stop] = tuple(i for i, p in enumerate(pieces) if cfg.stop in p)
            ids.extend(self._stop_cache[cfg.stop])
        if cfg.stop_at_eos and self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return ids

    def _sample(
        self, keyword_lists: list[list[str]], cfg: DecodingConfig, seed: int | None
    ) -> tuple[list[list[tuple[str, Generated]]], list[int]]:
        """One ``generate`` call for every image's prompt (left-padded rows, ``num_samples`` each); per
        image, the candidate texts (cut, not yet finished) with their ``Generated``, and how many of its
        keywords the prompt held."""
        prompts, kept = zip(*(self._prompt_ids(words, cfg.max_new_tokens) for words in keyword_lists))
        width = max(len(p) for p in prompts)
        device = self.device
        input_ids = torch.full((len(prompts), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        generators = None  # one per image: its candidates depend on the seed, not on its batch-mates
        if seed is not None:
            generators = [torch.Generator(device=device).manual_seed(seed) for _ in prompts]
        outs = generate(
            self.lm,
            cfg=cfg,
            input_ids=input_ids.to(device),
            attention_mask=None if bool(mask.all()) else mask.to(device),
            stop_ids=self.stop_ids(cfg),
            generator=generators,
            share_prompts=self.share_prompts,
        )
        return [[(self._candidate_text(g.tokens, cfg), g) for g in seqs] for seqs in outs], list(kept)

    def _candidate_text(self, tokens: list[int], cfg: DecodingConfig) -> str:
        """The continuation up to the separator (should the model write one) and the first stop text."""
        text = decode_tokens(self.tokenizer, tokens)
        return cut_caption(text.split(SEPARATOR)[0], cfg.stop)

    # ------------------------------------------------------------------------------------ results
    def _result(
        self,
        keywords: list[Keyword],
        texts: list[str],
        scores: list[float],
        score_kind: str,
        cfg: DecodingConfig,
        seed: int | None,
        style: str,
    ) -> CaptionResult:
        """Candidates (finished texts) best first; the clean style drops empty and repeated ones."""
        order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep sample order
        candidates = [Candidate(texts[i], float(scores[i])) for i in order]
        if style == "clean":
            seen: set[str] = set()
            kept = []
            for cand in candidates:
                if cand.text and cand.text not in seen:
                    seen.add(cand.text)
                    kept.append(cand)
            candidates = kept
        return CaptionResult(
            caption=candidates[0].text if candidates else "",
            model=self.model_id,
            candidates=candidates,
            score_kind=score_kind,
            keywords=list(keywords),
            decoding=to_dict(cfg),
            seed=seed,
        )


# ---------------------------------------------------------------------------------------------- loading
def sbg_settings(data: dict[str, Any] | None, *, where: str) -> tuple[DecodingConfig, str]:
    """The decoding defaults and caption style from an SBG model's settings (registry ``decoding`` over
    the ``decoding`` of its ``icg.json``): ``DecodingConfig`` fields over ``SBG_DECODING``,
    ``num_candidates`` (the registry's name for ``num_samples``) and ``style``."""
    data = dict(data or {})
    style = check_style(data.pop("style", DEFAULT_STYLE))
    if "num_candidates" in data:
        data["num_samples"] = data.pop("num_candidates")
    merged = {**to_dict(SBG_DECODING), **data}
    return from_dict(DecodingConfig, merged, where=where), style


def load_sbg_captioner(
    name: str, resolved: ResolvedModel, manager: ModelManager, *, vocabulary: str | Path | None = None
) -> SbgCaptioner:
    """An ``SbgCaptioner`` for a resolved SBG model: a GPT-2 folder (``config.json`` +
    ``model.safetensors``) and its settings (``resolved.meta``: registry facts > ``icg.json`` > defaults,
    see ``icg.sbg.kind.sbg_meta``).

    ``vocabulary`` (a ``vocabulary.json``, a folder or an id), else the runtime's (``--vocabulary``),
    overrides the model's. The CLIP is the manager's shared encoder, asked for only when text must be
    encoded, and its spec is resolved on first use, so keywords typed by a person are captioned without
    any CLIP.
    """
    from icg.models import loading
    from icg.sbg.kind import sbg_meta

    folder = Path(resolved.path)
    entry = resolved.entry
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: an SBG model is a GPT-2 folder (config.json + model.safetensors)")
    meta = dict(resolved.meta) if resolved.meta else sbg_meta(folder, entry)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(
            f"{folder}: no model.safetensors (ICG reads SBG weights from safetensors only; "
            f"`python -m icg import {folder}` converts a pytorch_model.bin)"
        )
    model_id = entry.id if entry is not None else name
    decoding, style = sbg_settings(meta.get("decoding"), where=f"{model_id} decoding defaults")
    vocabulary = vocabulary or manager.runtime.vocabulary or meta.get("vocabulary")
    vocab = Vocabulary.from_json(loading.resolve_vocabulary(vocabulary, manager))

    from transformers import GPT2LMHeadModel

    try:
        lm = GPT2LMHeadModel.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{folder}: not a loadable GPT-2 folder ({err})") from err
    lm = lm.to(manager.device, manager.dtype).eval()  # fp16 on CUDA by the manager's policy
    tokenizer = loading.load_tokenizer(meta.get("tokenizer"), manager)
    if len(tokenizer) > lm.config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model only {lm.config.vocab_size}: "
            "wrong tokenizer for this model"
        )
    if meta.get("normalize") is False:
        logger.warning("%s: SBG scores L2-normalised CLIP features; ignoring normalize=false", model_id)

    resolved_spec: list[ClipSpec] = []

    def spec() -> ClipSpec:
        if not resolved_spec:
            resolved_spec.append(loading.resolve_clip(meta.get("clip"), manager))
        return resolved_spec[0]

    return SbgCaptioner(
        lm,
        tokenizer,
        vocab,
        model_id=model_id,
        clip=lambda: manager.clip(spec()),
        clip_spec=spec,
        decoding=decoding,
        style=style,
        cache_dir=manager.models_dir / "cache",
    )
