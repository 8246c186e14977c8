"""Synthetic caption datasets: images that the tiny random CLIP tells apart, in the Flickr8k layout.

The eight designs were picked (greedily, from solid colours, halves and checkerboards of twelve colours,
saved as JPEG) so that the tiny CLIP's L2-normalised features of any two have a cosine below 0.93;
random noise images would all look alike to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

DESIGNS = [
    ("check", (255, 255, 0), (128, 0, 255)),
    ("check", (128, 128, 128), (255, 128, 0)),
    ("solid", (0, 255, 255)),
    ("check", (0, 0, 255), (0, 0, 0)),
    ("check", (0, 0, 0), (255, 255, 255)),
    ("solid", (255, 255, 255)),
    ("check", (255, 255, 255), (0, 128, 64)),
    ("check", (255, 0, 0), (255, 0, 255)),
]

#: Two captions per design, Flickr style (lower case is applied by training; " ." ends each one).
CAPTIONS = [
    ("A dog runs on the grass .", "The dog runs on the grass ."),
    ("Two children play in the water .", "Two kids play in the water ."),
    ("A man rides a bike down the street .", "The man rides a bike down the street ."),
    ("A woman in a red shirt sits on a bench .", "The woman in a red shirt sits on a bench ."),
    ("A black and white dog jumps over a log .", "The black and white dog jumps over a log ."),
    ("People walk along the beach at sunset .", "Some people walk along the beach at sunset ."),
    ("A girl in a pink dress plays with a ball .", "The girl in a pink dress plays with a ball ."),
    ("A brown horse stands in a snowy field .", "The brown horse stands in a snowy field ."),
]

#: Fixed SBG keywords per design (distinct, from the words of its captions).
KEYWORDS = [
    ["dog", "grass"],
    ["children", "water"],
    ["man", "bike", "street"],
    ["woman", "bench"],
    ["dog", "log"],
    ["people", "beach"],
    ["girl", "ball"],
    ["horse", "snow"],
]


def design_image(index: int, size: int = 64) -> Image.Image:
    """Design ``index`` (modulo 8); designs past the first eight get a thin stripe so files differ."""
    kind, *colours = DESIGNS[index % len(DESIGNS)]
    pixels = np.zeros((size, size, 3), np.uint8)
    if kind == "solid":
        pixels[:] = colours[0]
    else:  # 8-pixel checkerboard of two colours
        rows, cols = np.mgrid[:size, :size]
        first = (rows // 8 + cols // 8) % 2 == 0
        pixels[first], pixels[~first] = colours
    if index >= len(DESIGNS):
        pixels[index % size, :] = (index * 37 % 256, index * 91 % 256, index * 53 % 256)
    return Image.fromarray(pixels)


def write_flickr8k(root: Path, n_images: int = 8, captions_per_image: int = 2) -> Path:
    """A Kaggle-Flickr8k-layout folder (``captions.txt`` + ``Images/``) of ``n_images`` generated images;
    caption ``j`` of image ``i`` comes from ``CAPTIONS[i % 8]``. Returns ``root``."""
    images = Path(root) / "Images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"]
    for i in range(n_images):
        name = f"{1000 + i}_synthetic.jpg"
        design_image(i).save(images / name, quality=95)
        pair = CAPTIONS[i % len(CAPTIONS)]
        lines += [f"{name},{pair[j % len(pair)]}" for j in range(captions_per_image)]
    (Path(root) / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(root)


def write_keywords(path: Path, names: list[str]) -> Path:
    """A fixed-keywords JSONL for the images ``names`` (in design order)."""
    lines = [
        json.dumps({"image": name, "keywords": KEYWORDS[i % len(KEYWORDS)]}) for i, name in enumerate(names)
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def normalise(caption: str) -> str:
    """Compare captions across styles: lower case, no final period, single spaces."""
    return " ".join(caption.lower().replace(" .", "").rstrip(".").split())
