"""Model folders with absurd config values are refused before anything is built, naming file and field."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest

from icg.captioners import limits
from icg.captioners.prefix import load_prefix_model, save_prefix_model
from icg.cli import main
from icg.errors import CheckpointError
from icg.models.importer import import_model
from icg.sbg import kind as sbg_kind
from tests.model_fixtures import write_image


@pytest.fixture(scope="module")
def prefix_folder(fixture_files, tmp_path_factory) -> Path:
    model, cfg = load_prefix_model(fixture_files["clip_prefix_pt"])
    return save_prefix_model(model, cfg, tmp_path_factory.mktemp("prefix") / "model")


def _edited(src: Path, dest: Path, section: str | None, name: str, value) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    (config[section] if section else config)[name] = value
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


ABSURD_LM = [
    ("vocab_size", 10**12, "vocab_size must be 1 to 1000000, not 1000000000000"),
    ("n_layer", 100_000, "n_layer must be 1 to 256, not 100000"),
    ("n_embd", -8, "n_embd must be 1 to 16384, not -8"),
    ("n_positions", 12.5, "n_positions must be a whole number, not 12.5"),
    ("n_head", "2", "n_head must be a whole number, not '2'"),
    ("n_head", 3, "n_head 3 does not divide n_embd"),
]


@pytest.mark.parametrize(("name", "value", "message"), ABSURD_LM)
def test_clip_prefix_lm_sizes(prefix_folder, tmp_path, name, value, message):
    folder = _edited(prefix_folder, tmp_path / "m", "lm", name, value)
    with pytest.raises(CheckpointError) as info:
        load_prefix_model(folder)
    assert str(info.value).startswith(str(folder / "config.json"))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("prefix_length", 10**9, "mapper.prefix_length must be 1 to 1024, not 1000000000"),
        ("hidden_dim", -1, "mapper.hidden_dim must be 1 to 65536, not -1"),
        ("clip_dim", 7.0, "mapper.clip_dim must be a whole number, not 7.0"),
    ],
)
def test_clip_prefix_mapper_sizes(prefix_folder, tmp_path, name, value, message):
    folder = _edited(prefix_folder, tmp_path / "m", "mapper", name, value)
    with pytest.raises(CheckpointError, match=f"^{folder / 'config.json'}: {message}$"):
        load_prefix_model(folder)


def test_clip_prefix_config_that_is_not_an_object(prefix_folder, tmp_path):
    folder = _edited(prefix_folder, tmp_path / "m", None, "mapper", "big")
    with pytest.raises(CheckpointError, match="mapper must be a JSON object, not 'big'"):
        load_prefix_model(folder)


def test_the_cli_says_it_in_one_line(prefix_folder, tmp_path, fixture_files, capsys):
    folder = _edited(prefix_folder, tmp_path / "m", "lm", "n_layer", 100_000)
    image = write_image(tmp_path / "a.png")
    argv = ["caption", str(image), "--model", str(folder), "--device", "cpu", "--models-dir", str(tmp_path)]
    argv += ["--clip", fixture_files["clip_dir"], "--tokenizer", fixture_files["tokenizer_dir"]]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"icg: error: {folder / 'config.json'} (lm): n_layer must be 1 to 256, not 100000"
    )


@pytest.mark.parametrize(("name", "value", "message"), ABSURD_LM)
def test_sbg_generator_sizes_when_loading(fixture_files, tmp_path, name, value, message):
    folder = _edited(Path(fixture_files["sbg_generator_dir"]), tmp_path / "g", None, name, value)
    resolved = types.SimpleNamespace(path=folder, entry=None, meta=None)
    with pytest.raises(CheckpointError) as info:
        sbg_kind._load("g", resolved, manager=None)
    assert str(info.value).startswith(f"{folder / 'config.json'}: ") and message in str(info.value)


def test_sbg_generator_sizes_when_importing(fixture_files, tmp_path):
    folder = _edited(Path(fixture_files["sbg_generator_dir"]), tmp_path / "g", None, "vocab_size", 10**12)
    with pytest.raises(CheckpointError, match="vocab_size must be 1 to 1000000"):
        import_model([folder], "big-sbg", tmp_path / "models", kind="sbg")
    assert not (tmp_path / "models" / "big-sbg").exists()


def test_sizes_within_bounds_that_add_up_to_too_much():
    config = {"vocab_size": 1_000_000, "n_positions": 1024, "n_embd": 16384, "n_layer": 256, "n_head": 128}
    with pytest.raises(CheckpointError, match=r"^cfg: a GPT-2 of .* billion parameters .* larger than ICG"):
        limits.check_gpt2_config(config, "cfg")


def test_a_missing_size_is_named():
    with pytest.raises(CheckpointError, match="^cfg: GPT-2 config without n_head$"):
        limits.check_gpt2_config({"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1}, "cfg")


def test_gpt2_xl_passes():
    xl = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 1600, "n_layer": 48, "n_head": 25}
    limits.check_gpt2_config(xl, "gpt2-xl")


# ------------------------------------------------------------------------------------------ icg train
class _Tokenizer:
    """What ``load_lm`` asks of a tokenizer."""

    eos_token_id = 0

    def __len__(self) -> int:
        return 100


@pytest.mark.parametrize(("name", "value", "message"), ABSURD_LM[1:5])
def test_train_lm_config_sizes(tmp_path, name, value, message):
    """``icg train --lm-config FILE``: a random GPT-2 of absurd size is refused before it is built."""
    from icg.train.lm import load_lm

    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"n_layer": 2, "n_head": 2, "n_embd": 16, name: value}), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        load_lm(_Tokenizer(), lm_config=str(path))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_train_lm_config_that_is_not_an_object(tmp_path):
    from icg.errors import ConfigError
    from icg.train.lm import load_lm

    path = tmp_path / "lm.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{path}: a GPT-2 config must be a JSON object, not list$"):
        load_lm(_Tokenizer(), lm_config=str(path))


def test_train_from_a_gpt2_folder_checks_its_sizes(fixture_files, tmp_path):
    """``icg train --lm FOLDER`` and ``icg train sbg --init MODEL`` (which starts from the model's GPT-2
    folder) go through ``load_lm``: an absurd config.json is refused before transformers builds it."""
    from icg.train.lm import load_lm

    folder = _edited(Path(fixture_files["sbg_generator_dir"]), tmp_path / "g", None, "n_layer", 100_000)
    with pytest.raises(CheckpointError) as info:
        load_lm(_Tokenizer(), lm=str(folder))
    assert str(info.value) == f"{folder / 'config.json'}: n_layer must be 1 to 256, not 100000"


# ------------------------------------------------------------------------------------------ open_clip
def _clip_folder(src: Path, dest: Path, changes: dict) -> Path:
    shutil.copytree(src, dest)
    (config,) = dest.glob("*.json")
    data = json.loads(config.read_text(encoding="utf-8"))
    for field, value in changes.items():
        section, _, name = field.rpartition(".")
        (data[section] if section else data)[name] = value
    config.write_text(json.dumps(data), encoding="utf-8")
    return dest


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vision_cfg.layers": 100_000}, "vision_cfg.layers must be 1 to 256, not 100000"),
        ({"text_cfg.vocab_size": 10**12}, "text_cfg.vocab_size must be 1 to 1000000, not 1000000000000"),
        ({"embed_dim": -4}, "embed_dim must be 1 to 16384, not -4"),
        ({"vision_cfg.width": 12.5}, "vision_cfg.width must be a whole number, not 12.5"),
        ({"vision_cfg.image_size": [64, 0]}, "vision_cfg.image_size[1] must be 1 to 4096, not 0"),
        ({"vision_cfg.mlp_ratio": float("nan")}, "vision_cfg.mlp_ratio must be a number above 0"),
        ({"text_cfg.width": 16_384, "text_cfg.layers": 256}, "a CLIP of about 825 billion"),
    ],
)
def test_a_local_clip_config_with_absurd_sizes(fixture_files, tmp_path, changes, message):
    """A local CLIP folder's open_clip config is checked before open_clip builds the model."""
    from icg.clip_encoder import ClipEncoder, spec_from_folder

    folder = _clip_folder(Path(fixture_files["clip_dir"]), tmp_path / "clip", changes)
    (config,) = folder.glob("*.json")
    with pytest.raises(CheckpointError) as info:
        ClipEncoder.load(spec_from_folder(folder), device="cpu")
    assert str(info.value).startswith(f"{config}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_open_clip_configs_of_published_models_pass():
    open_clip = pytest.importorskip("open_clip")
    for arch in ("ViT-B-32", "ViT-L-14", "RN50", "ViT-bigG-14"):
        limits.check_open_clip_config(open_clip.get_model_config(arch), arch)
