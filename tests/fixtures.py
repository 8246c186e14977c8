"""Tiny random-weight models in the real on-disk formats, for tests and offline trials.

    python -m tests.fixtures OUT_DIR

writes them and prints a JSON manifest of the paths. Nothing here touches the network: the CLIP uses
open_clip's bundled BPE vocabulary, and the GPT-2 tokenizer is a byte-level BPE trained in-process.
The model builders live in ``icg.tiny`` (the doctor and the benchmark use them too).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from icg.tiny import (  # noqa: F401 - re-exported for the tests
    CLIP_DIM,
    LM_WIDTH,
    PREFIX_LENGTH,
    tiny_clip_spec,
    tiny_lm,
    tiny_prefix_state,
    tiny_tokenizer,
)

# The published SBG vocabulary files' structure, in miniature: (keyword, part of speech, frequency)
# triples, most frequent first, and the category hierarchy with all eleven top-level keys.
TINY_LABELS = [("a", "NOUN", 900), ("in", "ADV", 800), ("be", "VERB", 700)] + [
    (w, pos, 600 - i)
    for i, (w, pos) in enumerate(
        [
            ("dog", "NOUN"),
            ("man", "NOUN"),
            ("grass", "NOUN"),
            ("run", "VERB"),
            ("white", "ADJ"),
            ("water", "NOUN"),
            ("red", "ADJ"),
            ("beach", "NOUN"),
            ("quickly", "ADV"),
            ("street", "NOUN"),
            ("girl", "NOUN"),
            ("snow", "NOUN"),
            ("young", "ADJ"),
            ("bike", "NOUN"),
            ("field", "NOUN"),
            ("indoor", "NOUN"),
            ("ball", "NOUN"),
            ("play", "VERB"),
            ("sunset", "NOUN"),
            ("happy", "ADJ"),
        ]
    )
]

TINY_ENCYCLOPEDIA = {
    "scenery": {
        "beach": ["beach", "shore", "sand"],
        "street": ["street", "road", "city"],
        "indoor": ["indoor", "room", "sofa"],
    },
    "human": ["man", "woman", "child", "biker"],
    "animal": {"mammal": ["dog", "horse", "cat"], "bird": ["bird", "duck"]},
    "plant": {"tree": ["tree", "leaf"], "flower": ["flower", "rose"]},
    "object": {"vehicle": ["bike", "car"], "toy": ["ball", "kite"], "clothing and fashion": ["shirt", "hat"]},
    "activity": {"playing": ["play", "jump"], "eating": ["eat", "bite"]},
    "weather": {"sunny": ["sun", "bright"], "snowy": ["snow", "cold"]},
    "time": {"morning": ["day", "sunrise"], "night": ["night", "dark"]},
    "number": ["one", "two", "three"],
    "adverb": ["in", "quickly"],
    "adjective": ["white", "red", "young", "happy"],
}


def write_all(out: Path) -> dict[str, str]:
    """Write every fixture under ``out`` and return the manifest (name -> path)."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = tiny_clip_spec(out / "clip")
    tok_dir = out / "tokenizer"
    tok = tiny_tokenizer(tok_dir)
    prefix_pt = out / "clip-prefix-tiny.pt"
    torch.save(tiny_prefix_state(tok), prefix_pt)
    sbg_dir = out / "sbg-generator"
    tiny_lm(tok, seed=1).save_pretrained(str(sbg_dir), safe_serialization=True)
    labels_pkl, ency_pkl = out / "all_labels.pkl", out / "encyclopedia.pkl"
    labels_pkl.write_bytes(pickle.dumps(TINY_LABELS))
    ency_pkl.write_bytes(pickle.dumps(TINY_ENCYCLOPEDIA))
    return {
        "clip_dir": str(out / "clip"),
        "clip_config": spec.config_path,
        "clip_weights": spec.weights_path,
        "tokenizer_dir": str(tok_dir),
        "clip_prefix_pt": str(prefix_pt),
        "sbg_generator_dir": str(sbg_dir),
        "all_labels_pkl": str(labels_pkl),
        "encyclopedia_pkl": str(ency_pkl),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tests.fixtures OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(write_all(Path(argv[0])), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
