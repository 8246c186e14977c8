"""Dependency planning (icg.deps) and install.py, in the WebUI (fake ``launch``) and standalone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from icg import deps

ROOT = Path(__file__).resolve().parents[1]
INSTALL_PY = ROOT / "install.py"


# --------------------------------------------------------------------------------------------------
# Version comparison


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("2.0.0", "2.1.2+cu121"),
        ("2.1.1", "2.1.2+cu121"),
        ("4.30.2", "4.46.1"),
        ("4.46.1", "5.0.0"),
        ("2.0.0rc1", "2.0.0"),
        ("2.0.0a1", "2.0.0b1"),
        ("2.0.0b2", "2.0.0rc1"),
        ("2.0.0.dev1", "2.0.0a1"),
        ("2.0.0", "2.0.0.post1"),
        ("1.9.9", "1.10.27"),
        ("1.10.2", "1.10.27"),
        ("0.9", "0.16"),
        ("2.20.0", "2.23.0"),
        ("2.4.0.dev20240101+cpu", "2.4.0"),
        ("1!0.1", "2!0.0"),
    ],
)
def test_version_order(older, newer):
    assert deps.parse_version(older) < deps.parse_version(newer)
    assert not deps.parse_version(newer) < deps.parse_version(older)


@pytest.mark.parametrize(
    ("a", "b"), [("2.1", "2.1.0"), ("2.1.2+cu121", "2.1.2"), ("v1.0", "1.0.0"), ("2.0.0RC1", "2.0.0rc1")]
)
def test_version_equal(a, b):
    assert deps.parse_version(a) == deps.parse_version(b)


@pytest.mark.parametrize("bad", ["", "unknown", "abc1.0", "1.0-beta-x"])
def test_unreadable_version(bad):
    with pytest.raises(ValueError):
        deps.parse_version(bad)


def test_version_in_range():
    assert deps.version_in_range("4.30.2", "4.30")
    assert deps.version_in_range("5.2.0", "4.30")
    assert not deps.version_in_range("4.29.9", "4.30")
    assert not deps.version_in_range("2.1.0rc1", "2.1")
    assert deps.version_in_range("1.9", None, "2.0")
    assert not deps.version_in_range("2.0", None, "2.0")


def test_versions_without_the_packaging_distribution(monkeypatch):
    """A fresh virtualenv holds only pip: its vendored packaging reads the versions then."""
    for name in ("packaging", "packaging.version", "packaging.requirements"):
        monkeypatch.setitem(sys.modules, name, None)  # `import packaging` now raises ImportError
    assert deps.version_in_range("4.30.2", "4.30") and not deps.version_in_range("4.29.9", "4.30")
    assert deps.version_in_range("5.0.0rc1", "4.30")  # a pre-release of a newer version is accepted
    assert deps.plan({**_all_present(), "torch": "2.0.1"}).warnings


def test_normalize_name():
    assert deps.normalize_name("open_clip_torch") == "open-clip-torch"
    assert deps.normalize_name("Open.Clip--Torch") == "open-clip-torch"
    assert deps.normalize_name("Pillow") == "pillow"


# --------------------------------------------------------------------------------------------------
# The plan


def _all_present(**overrides):
    table = {
        "torch": "2.1.2+cu121",
        "torchvision": "0.16.2+cu121",
        "transformers": "4.30.2",
        "open_clip_torch": "2.20.0",
        "safetensors": "0.4.2",
        "huggingface_hub": "0.36.2",
        "numpy": "1.26.2",
        "Pillow": "9.5.0",
        "tqdm": "4.70.1",
        "packaging": "26.4",
        "gradio": "3.41.2",
    }
    table.update(overrides)
    return table


def test_webui_pins_need_nothing():
    result = deps.plan(_all_present())
    assert result.install == () and result.warnings == ()
    assert result.nothing_to_install
    assert "open-clip-torch" in result.satisfied


def test_missing_packages_are_installed():
    result = deps.plan(_all_present(tqdm=None, safetensors=None))
    assert result.install == ("safetensors>=0.4", "tqdm>=4.60")
    table = _all_present()
    del table["open_clip_torch"]
    assert deps.plan(table).install == ("open_clip_torch>=2.20",)


def test_everything_missing_standalone():
    result = deps.plan({})
    assert "torch>=2.1" in result.install and "transformers>=4.30" in result.install
    assert not any(spec.startswith("gradio") for spec in result.install)
    assert "gradio>=3.41" in deps.plan({}, include_optional=True).install


def test_old_torch_warns_and_is_never_touched():
    result = deps.plan(_all_present(torch="2.0.1+cu118"))
    assert result.install == ()
    assert len(result.warnings) == 1
    assert "torch 2.0.1+cu118" in result.warnings[0] and "pins" in result.warnings[0]


@pytest.mark.parametrize("version", ["4.30.2", "4.46.1", "5.0.0", "5.24.0"])
def test_transformers_range_is_wide(version):
    assert deps.plan(_all_present(transformers=version)).warnings == ()


def test_out_of_range_unpinned_warns_with_command():
    result = deps.plan(_all_present(huggingface_hub="0.14.1"))
    assert result.install == ()
    assert "huggingface_hub 0.14.1" in result.warnings[0]
    assert 'pip install "huggingface_hub>=0.16"' in result.warnings[0]


def test_names_in_any_spelling_and_unknown_versions():
    table = _all_present()
    table["open-clip-torch"] = table.pop("open_clip_torch")
    table["pillow"] = table.pop("Pillow")
    table["numpy"] = ""  # present, version unknown: accepted
    table["tqdm"] = "weird"
    result = deps.plan(table)
    assert result.install == ()
    assert len(result.warnings) == 1 and "can't read" in result.warnings[0]


def test_requirement_specifier_with_maximum():
    req = deps.Requirement("foo_bar", "1.0", "2.0")
    assert req.specifier == "foo_bar>=1.0,<2.0" and req.name == "foo-bar"


def test_installed_versions_reads_metadata(tmp_path, monkeypatch):
    for folder, name, version in [
        ("Foo_Bar-1.2.3", "Foo_Bar", "1.2.3"),
        ("open_clip_torch-2.20.0", "open-clip-torch", "2.20.0"),
    ]:
        info = tmp_path / f"{folder}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = deps.installed_versions(["foo-bar", "Foo.Bar", "open_clip_torch", "no-such-package-icg-test"])
    assert found == {"foo-bar": "1.2.3", "open-clip-torch": "2.20.0", "no-such-package-icg-test": None}
    assert set(deps.installed_versions()) == set(deps.REQUIREMENTS)


def test_pip_command_strings():
    assert deps.run_pip_command(["a>=1", "b>=2,<3"]) == 'install "a>=1" "b>=2,<3"'
    assert deps.pip_install_args(["a>=1"]) == [sys.executable, "-m", "pip", "install", "a>=1"]


def test_deps_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import icg.deps;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "bad = new - set(sys.stdlib_module_names) - {'icg'}; print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# install.py as the WebUI runs it: a subprocess with `launch` importable

FAKE_LAUNCH = textwrap.dedent(
    """
    import json, os

    class _Args:
        skip_install = os.environ.get("FAKE_SKIP_INSTALL") == "1"

    args = _Args()

    def _record(*call):
        with open(os.environ["FAKE_LAUNCH_LOG"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(call) + "\\n")

    def is_installed(package):
        _record("is_installed", package)
        return True

    def run_pip(command, desc=None):
        _record("run_pip", command, desc)
    """
)


def _run_install(tmp_path, *args, **env_overrides):
    fake = tmp_path / "fake_webui"
    fake.mkdir(exist_ok=True)
    (fake / "launch.py").write_text(FAKE_LAUNCH, encoding="utf-8")
    log = tmp_path / "launch_calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICG_", "FAKE_"))}
    env.update(
        PYTHONPATH=str(fake),
        FAKE_LAUNCH_LOG=str(log),
        ICG_HOME=str(tmp_path / "icg_home"),
        HF_HUB_OFFLINE="1",
    )
    env.update(env_overrides)
    work = tmp_path / "webui"
    work.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(INSTALL_PY), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    calls = (
        [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    )
    return result, calls


def test_install_with_everything_installed_pip_is_not_run(tmp_path):
    result, calls = _run_install(tmp_path, ICG_SKIP_WEIGHTS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in calls if c[0] == "run_pip"]
    assert "ICG_SKIP_WEIGHTS" in result.stdout


def test_skip_install_flag_does_nothing(tmp_path):
    result, calls = _run_install(tmp_path, "--skip-install", ICG_SKIP_WEIGHTS="1")
    assert result.returncode == 0
    assert calls == [] and result.stdout == ""


def test_skip_install_from_webui_args_does_nothing(tmp_path):
    result, calls = _run_install(tmp_path, FAKE_SKIP_INSTALL="1")
    assert result.returncode == 0
    assert calls == [] and result.stdout == ""


def test_failing_weight_download_does_not_fail_startup(tmp_path):
    result, calls = _run_install(tmp_path, ICG_OFFLINE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in calls if c[0] == "run_pip"]
    out = result.stdout
    assert_one_short_not_fetched_line(out)
    # inside the WebUI (no modules.paths_internal here) the folder is ./models/icg of the webui root
    assert str(tmp_path / "webui" / "models" / "icg") in out


def assert_one_short_not_fetched_line(out):
    """An offline start says in one short line what is missing and how to stop trying (issue 11, 22)."""
    lines = [line for line in out.splitlines() if "could not fetch" in line or "http" in line]
    assert len(lines) == 1, out
    line = lines[0]
    assert len(line) < 500 and "clip-prefix-flickr8k" in line and "icg_import.py" in line
    assert "ICG_SKIP_WEIGHTS=1" in line and "--icg-offline" in line


# --------------------------------------------------------------------------------------------------
# install.py's glue, in-process


@pytest.fixture
def install_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("icg_install_under_test", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["install.py"])
    return module


def test_missing_package_goes_through_run_pip(install_module, monkeypatch):
    table = dict.fromkeys(deps.REQUIREMENTS, "")
    table["tqdm"] = None
    monkeypatch.setattr(deps, "installed_versions", lambda names=None: dict(table))
    calls = []
    launch = types.SimpleNamespace(
        is_installed=lambda name: name != "tqdm", run_pip=lambda command, desc: calls.append(command)
    )
    install_module.install_dependencies(launch)
    assert calls == ['install "tqdm>=4.60"']


def test_standalone_uses_this_interpreters_pip(install_module, monkeypatch):
    table = dict.fromkeys(deps.REQUIREMENTS, "")
    table["safetensors"] = None
    monkeypatch.setattr(deps, "installed_versions", lambda names=None: dict(table))
    calls = []
    monkeypatch.setattr(install_module.subprocess, "check_call", lambda argv: calls.append(argv))
    install_module.install_dependencies(None)
    assert calls == [[sys.executable, "-m", "pip", "install", "safetensors>=0.4"]]


def test_warnings_are_printed(install_module, monkeypatch, capsys):
    table = dict.fromkeys(deps.REQUIREMENTS, "")
    table["torch"] = "2.0.1"
    monkeypatch.setattr(deps, "installed_versions", lambda names=None: dict(table))
    install_module.install_dependencies(None)
    assert "torch 2.0.1" in capsys.readouterr().out


def test_errors_never_escape_main(install_module, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("pip exploded")

    monkeypatch.setattr(install_module, "get_launch", lambda: None)
    monkeypatch.setattr(install_module, "install_dependencies", boom)
    monkeypatch.setattr(install_module, "fetch_weights", boom)
    assert install_module.main() == 0
    assert "pip exploded" in capsys.readouterr().out


def test_standalone_weights_go_to_icg_home(install_module, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ICG_OFFLINE", "1")
    monkeypatch.delenv("ICG_SKIP_WEIGHTS", raising=False)
    install_module.fetch_weights(None)
    out = capsys.readouterr().out
    assert str(tmp_path / "home") in out
    assert_one_short_not_fetched_line(out)


def test_models_dir_flag(install_module, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["install.py", "--icg-models-dir", str(tmp_path / "m")])
    assert install_module.webui_models_root(object()) == str(tmp_path / "m")
    monkeypatch.setattr(sys, "argv", ["install.py"])
    assert install_module.webui_models_root(None) is None


def test_default_weights_are_fetched_and_converted(install_module, monkeypatch, tmp_path, capsys):
    from tests.model_fixtures import install_fake_hub, use_test_registry

    use_test_registry(monkeypatch, tmp_path)
    install_fake_hub(monkeypatch)
    for var in ("HF_HUB_OFFLINE", "ICG_OFFLINE", "ICG_SKIP_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("ICG_HOME", str(home))
    monkeypatch.setattr(
        install_module, "DEFAULT_MODELS", ("tiny-prefix", "tiny-vocabulary", "tiny-tokenizer", "tiny-clip")
    )
    install_module.fetch_weights(None)
    assert f"default models are in {home}" in capsys.readouterr().out
    assert sorted(p.name for p in (home / "tiny-prefix").iterdir() if p.is_file()) == [
        "config.json",
        "model.safetensors",
    ]
    assert sorted(p.name for p in (home / "tiny-vocabulary").iterdir() if p.is_file()) == ["vocabulary.json"]


def test_unreachable_weights_print_manual_steps(install_module, monkeypatch, tmp_path, capsys):
    from icg.models import download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ICG_OFFLINE", raising=False)
    monkeypatch.delenv("ICG_SKIP_WEIGHTS", raising=False)
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(download, "probe_origin", lambda origin, timeout=0: "unreachable (no route to host)")
    download.forget_unreachable()
    monkeypatch.setattr(install_module, "get_launch", lambda: None)
    monkeypatch.setattr(install_module, "install_dependencies", lambda launch: None)
    assert install_module.main() == 0
    out = capsys.readouterr().out
    assert_one_short_not_fetched_line(out)
    assert "5 default model(s)" in out
    download.forget_unreachable()


def test_under_icg_offline_the_hint_is_only_the_skip_variable(install_module, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["install.py", "--icg-offline"])
    monkeypatch.setenv("ICG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ICG_SKIP_WEIGHTS", raising=False)
    install_module.fetch_weights(None)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "set ICG_SKIP_WEIGHTS=1." in line and "add --icg-offline" not in line
