"""Tiny random-weight models with the real architectures, built without any download.

They serve the doctor's smoke caption, the benchmark's ``--size tiny`` and the test fixtures
(``python -m tests.fixtures`` writes them in the real on-disk formats). Random weights give random
words: that is expected, what matters is that every stage runs.
"""

from __future__ import annotations

import json
from pathlib import Path

CLIP_NAME = "icg-tiny-clip"
CLIP_DIM = 32
LM_WIDTH = 128  # two 64-wide heads, so the head count is inferable from the width as for GPT-2
PREFIX_LENGTH = 10

TINY_CLIP_CONFIG = {
    "embed_dim": CLIP_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

CORPUS = [
    "a dog runs on the grass .",
    "two children play in the water .",
    "a man rides a bike down the street .",
    "a woman in a red shirt sits on a bench .",
    "a black and white dog jumps over a log .",
    "people walk along the beach at sunset .",
    "a girl in a pink dress plays with a ball .",
    "a brown horse stands in a snowy field .",
    "an old man reads a newspaper in the park .",
    "three boys climb a rocky mountain .",
    "a cat sleeps on a blue sofa indoors .",
    "a crowd of people watch a concert at night .",
    "dog, grass, run ### a dog runs through the grass .",
    "man, bike, street ### a man rides his bike .",
    "beach, sunset, people ### people on a beach .",
    "water, child, play ### a child plays in the water .",
    "snow, horse, field ### a horse in the snow .",
    "a bird flies over the lake in the morning .",
    "a group of friends eat dinner together .",
    "a young boy wearing a green jacket smiles .",
]


def tiny_clip_spec(folder: Path):
    """Write the tiny CLIP (open_clip config JSON + safetensors weights) into ``folder``.

    Returns its ClipSpec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from icg.clip_encoder import without_weights_warning
    from icg.config import ClipSpec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{CLIP_NAME}.json"
    weights = folder / f"{CLIP_NAME}.safetensors"
    config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2), encoding="utf-8")
    if not weights.exists():
        open_clip.add_model_config(config)
        torch.manual_seed(0)
        with without_weights_warning():
            model = open_clip.create_model(CLIP_NAME)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return ClipSpec(
        arch=CLIP_NAME, pretrained=None, quick_gelu=False, config_path=str(config), weights_path=str(weights)
    )


def tiny_tokenizer(folder: Path | None = None):
    """A byte-level BPE GPT-2-style tokenizer trained on ``CORPUS``; saved to ``folder`` when given."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(folder))
    return tok


def tiny_lm(tokenizer, *, seed: int = 0, n_layer: int = 2, init: float = 0.5):
    """A 2-layer GPT-2 sized to the tokenizer. The large init spreads the logits so greedy decoding
    meets no near-ties that float rounding could flip (the equivalence tests rely on that)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=n_layer,
        n_head=LM_WIDTH // 64,
        n_embd=LM_WIDTH,
        n_positions=128,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=init,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_prefix_state(tokenizer, *, seed: int = 0) -> dict:
    """A CLIP-prefix ``state_dict`` in the predecessor layout: ``gpt.*`` + ``clip_project.model.{0,2}.*``."""
    import torch

    from icg.captioners.mappers import MapperConfig, build_mapper

    lm = tiny_lm(tokenizer, seed=seed)
    torch.manual_seed(seed + 1)
    mapper = build_mapper(
        MapperConfig("mlp", CLIP_DIM, LM_WIDTH, PREFIX_LENGTH, hidden_dim=LM_WIDTH * PREFIX_LENGTH // 2)
    )
    for p in mapper.parameters():  # prefixes on the scale of the token embeddings
        torch.nn.init.normal_(p, std=0.3)
    state = {f"gpt.{k}": v for k, v in lm.state_dict().items()}
    state.update({f"clip_project.{k}": v for k, v in mapper.state_dict().items()})
    return state
