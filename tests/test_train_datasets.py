"""Caption dataset readers: Flickr8k, Flickr30k variants, folders with sidecars, and the seed's split."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from icg.errors import IcgError
from icg.train.datasets import DatasetError, load_dataset, parse_captions, read_folder


def _images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / name)


def test_flickr8k_captions_txt_groups_five_per_image_and_keeps_commas(tmp_path):
    _images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    rows = ["image,caption"]
    rows += [f"a.jpg,A dog number {i} runs ." for i in range(5)]
    rows += ['b.jpg,"A man, a woman and a child sit ."', "b.jpg,A man sits, unquoted ."]
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = load_dataset(tmp_path)  # the Kaggle folder: captions.txt + Images/
    assert ds.format == "flickr8k"
    assert [im.name for im in ds.images] == ["a.jpg", "b.jpg"]
    assert ds.images[0].captions == tuple(f"A dog number {i} runs ." for i in range(5))
    assert ds.images[1].captions == ("A man, a woman and a child sit .", "A man sits, unquoted .")
    assert ds.images[1].path == tmp_path / "Images" / "b.jpg"
    assert ds.num_captions == 7


def test_flickr30k_results_csv_pipe_format_with_the_broken_row(tmp_path):
    root = tmp_path / "flickr30k_images"
    _images(root / "flickr30k_images", ["1.jpg", "2.jpg"])
    text = (
        "image_name| comment_number| comment\n"
        "1.jpg| 0| Two young guys with shaggy hair look at their hands .\n"
        '1.jpg| 1| A man says "hello" to a friend .\n'
        "2.jpg| 0| A dog runs .\n"
        "2.jpg| 4 A dog runs across the grass .\n"
    )
    (root / "results.csv").write_text(text, encoding="utf-8")
    ds = load_dataset(tmp_path)  # finds flickr30k_images/results.csv and the nested image folder
    assert ds.format == "flickr30k"
    assert ds.images[0].captions[1] == 'A man says "hello" to a friend .'
    assert ds.images[1].captions == ("A dog runs .", "A dog runs across the grass .")
    assert ds.images[1].path == root / "flickr30k_images" / "2.jpg"


def test_flickr30k_captions_csv_variant_columns_by_name():
    rows, fmt = parse_captions("image_name,comment_number,comment\nx.jpg,0,A cat .\nx.jpg,1,A cat sleeps .\n")
    assert fmt == "flickr30k"
    assert rows == [("x.jpg", "A cat ."), ("x.jpg", "A cat sleeps .")]


def test_flickr8k_token_file_and_missing_images_are_left_out(tmp_path, caplog):
    _images(tmp_path / "Flicker8k_Dataset", ["p.jpg"])
    (tmp_path / "Flickr8k.token.txt").write_text(
        "p.jpg#0\tA child climbs .\np.jpg#1\tA kid on stairs .\ngone.jpg.1#0\tNot there .\n", encoding="utf-8"
    )
    ds = load_dataset(tmp_path / "Flickr8k.token.txt")
    assert ds.format == "flickr8k-token"
    assert [(im.name, im.captions) for im in ds.images] == [
        ("p.jpg", ("A child climbs .", "A kid on stairs ."))
    ]
    assert "gone.jpg.1" in caplog.text


def test_folder_with_sidecars_one_caption_per_line(tmp_path):
    _images(tmp_path / "set", ["one.png", "two.png", "three.png"])
    (tmp_path / "set" / "one.txt").write_text("a red square\n\nanother line\n", encoding="utf-8")
    (tmp_path / "set" / "two.txt").write_text("\ufeffa blue square", encoding="utf-8")
    ds = load_dataset(tmp_path / "set")  # three.png has no caption file: left out
    assert ds.format == "folder"
    assert [(im.name, im.captions) for im in ds.images] == [
        ("one.png", ("a red square", "another line")),
        ("two.png", ("a blue square",)),
    ]
    with pytest.raises(DatasetError, match="no image with a .caption caption file"):
        read_folder(tmp_path / "set", caption_ext="caption")


def test_seed_split_takes_the_last_images(tmp_path):
    names = [f"{i}.png" for i in range(10)]
    _images(tmp_path / "Images", names)
    (tmp_path / "captions.txt").write_text(
        "image,caption\n" + "".join(f"{n},cap {n} .\n" for n in names), encoding="utf-8"
    )
    train, test = load_dataset(tmp_path).split(3)
    assert [im.name for im in train.images] == names[:7]
    assert [im.name for im in test.images] == names[7:]
    with pytest.raises(DatasetError, match="fewer than the 11 test images"):
        load_dataset(tmp_path).split(11)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "no captions file"),
        (
            lambda p: (p.mkdir(), (p / "captions.txt").write_text("image,caption\nx.jpg,a\n")),
            "can't find its images",
        ),
    ],
)
def test_errors_name_the_path_and_the_reason(tmp_path, setup, message):
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(IcgError, match=message) as info:
        load_dataset(target)
    assert str(target) in str(info.value)


def test_images_folder_can_be_given(tmp_path):
    _images(tmp_path / "elsewhere", ["x.jpg"])
    (tmp_path / "captions.txt").write_text("image,caption\nx.jpg,a thing .\n", encoding="utf-8")
    ds = load_dataset(tmp_path / "captions.txt", images_dir=tmp_path / "elsewhere")
    assert ds.images[0].path == tmp_path / "elsewhere" / "x.jpg"
