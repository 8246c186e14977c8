"""Which Python packages ICG needs, and what to do about the ones that are installed.

Importing this module takes only the standard library: ``install.py`` imports it before any dependency
exists. Versions are read with ``importlib.metadata``, never by importing the packages, and compared with
``packaging`` (PEP 440), imported when first needed: the installed distribution, else the copy pip
vendors (pip is always there when something is to be installed).

Policy: install only what is missing. A package that is present but outside ICG's range is never
upgraded or downgraded here, only reported: the WebUI pins torch, torchvision, transformers,
open_clip_torch, gradio, numpy and Pillow, and even the unpinned ones (huggingface_hub, safetensors,
tqdm) are shared with the WebUI and other extensions, where a silent upgrade can break them (for example
transformers 4.30 needs huggingface_hub < 1.0).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "REQUIREMENTS",
    "Plan",
    "Requirement",
    "installed_versions",
    "normalize_name",
    "parse_version",
    "pip_install_args",
    "plan",
    "run_pip_command",
    "version_in_range",
]


def normalize_name(name: str) -> str:
    """PEP 503 name: lowercase, runs of ``-``, ``_`` and ``.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


@dataclass(frozen=True)
class Requirement:
    """One dependency: ``minimum <= version < maximum`` (``maximum`` exclusive, ``None`` = no bound)."""

    pip_name: str
    minimum: str | None
    maximum: str | None = None
    pinned_by_webui: bool = False
    optional: bool = False

    @property
    def name(self) -> str:
        """The normalised distribution name (the key of ``REQUIREMENTS``)."""
        return normalize_name(self.pip_name)

    @property
    def specifier(self) -> str:
        """A pip requirement string, e.g. ``'transformers>=4.30'``."""
        bounds = []
        if self.minimum:
            bounds.append(f">={self.minimum}")
        if self.maximum:
            bounds.append(f"<{self.maximum}")
        return self.pip_name + ",".join(bounds)

    def admits(self, version: str) -> bool:
        """Whether ``version`` satisfies the range (its local part ignored, pre-releases allowed);
        ``ValueError`` when it isn't a version."""
        _, requirements = _packaging()
        return requirements.Requirement(self.specifier).specifier.contains(
            parse_version(version), prereleases=True
        )


def _table(*requirements: Requirement) -> Mapping[str, Requirement]:
    return MappingProxyType({r.name: r for r in requirements})


# Ranges admit the AUTOMATIC1111 1.10.1 pins, Forge and current releases (keep in step with pyproject).
REQUIREMENTS: Mapping[str, Requirement] = _table(
    Requirement("torch", "2.1", pinned_by_webui=True),
    Requirement("torchvision", "0.16", pinned_by_webui=True),
    Requirement("transformers", "4.30", pinned_by_webui=True),
    Requirement("open_clip_torch", "2.20", pinned_by_webui=True),
    Requirement("safetensors", "0.4"),
    Requirement("huggingface_hub", "0.16"),
    Requirement("numpy", "1.24", pinned_by_webui=True),
    Requirement("Pillow", "9.5", pinned_by_webui=True),
    Requirement("tqdm", "4.60"),
    Requirement("packaging", "20.0"),
    Requirement("gradio", "3.41", pinned_by_webui=True, optional=True),
)


# --------------------------------------------------------------------------------------------------
# Versions (PEP 440, through packaging)


def _packaging() -> tuple[Any, Any]:
    """``packaging.version`` and ``packaging.requirements``: the installed ones, else pip's copy."""
    try:
        from packaging import requirements, version
    except ImportError:  # a fresh virtualenv holds only pip, which vendors packaging
        from pip._vendor.packaging import requirements, version
    return version, requirements


def parse_version(text: str) -> Any:
    """``text`` as a ``packaging`` Version without its local part (``2.1.2+cu121`` -> ``2.1.2``).
    Raises ``ValueError`` for text that isn't a PEP 440 version."""
    version, _ = _packaging()
    return version.Version(version.Version(text or "").public)


def version_in_range(version: str, minimum: str | None = None, maximum: str | None = None) -> bool:
    """``minimum <= version < maximum`` (PEP 440 specifiers), either bound optional; pre-releases count."""
    return Requirement("x", minimum, maximum).admits(version)


# --------------------------------------------------------------------------------------------------
# Installed packages and the plan


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    key = normalize_name(name)
    for candidate in dict.fromkeys((name, key, key.replace("-", "_"))):
        try:
            version = metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info folder counts as missing
            continue
        if version:
            return version
    return None


def installed_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """``{normalised name: version or None}`` from the installed distributions' metadata.

    ``names`` defaults to every name in ``REQUIREMENTS``. The packages are not imported.
    """
    wanted = list(names) if names is not None else list(REQUIREMENTS)
    return {normalize_name(name): _dist_version(name) for name in wanted}


@dataclass(frozen=True)
class Plan:
    """What ``install.py`` should do: ``install`` the missing packages (pip specifiers), show ``warnings``."""

    install: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    satisfied: tuple[str, ...] = ()

    @property
    def nothing_to_install(self) -> bool:
        """True when every needed package is present."""
        return not self.install


def plan(
    installed: Mapping[str, str | None],
    *,
    include_optional: bool = False,
    requirements: Mapping[str, Requirement] | None = None,
) -> Plan:
    """Decide what to install given ``installed`` (``{name: version}``; names in any PEP 503 spelling).

    A name that is absent or maps to ``None`` is missing and gets installed (optional ones only with
    ``include_optional``). ``""`` means present with an unknown version: accepted as is. A present
    version outside the range is never changed, only warned about.
    """
    table = requirements if requirements is not None else REQUIREMENTS
    versions = {normalize_name(name): version for name, version in installed.items()}
    install: list[str] = []
    warnings: list[str] = []
    satisfied: list[str] = []
    for req in table.values():
        version = versions.get(req.name)
        if version is None:
            if include_optional or not req.optional:
                install.append(req.specifier)
            continue
        if version == "":
            satisfied.append(req.name)
            continue
        try:
            ok = req.admits(version)
        except ValueError:
            warnings.append(
                f"{req.pip_name}: can't read the installed version {version!r}; ICG needs {req.specifier} "
                "and leaves it as it is."
            )
            continue
        if ok:
            satisfied.append(req.name)
        elif req.pinned_by_webui:
            warnings.append(
                f"{req.pip_name} {version} is installed but ICG needs {req.specifier}. ICG does not change "
                "it because the WebUI pins it; captioning may fail until the WebUI (or you) updates it."
            )
        else:
            warnings.append(
                f"{req.pip_name} {version} is installed but ICG needs {req.specifier}. ICG does not upgrade "
                f'shared packages by itself; to upgrade it: {sys.executable} -m pip install "{req.specifier}"'
            )
    return Plan(install=tuple(install), warnings=tuple(warnings), satisfied=tuple(satisfied))


def pip_install_args(specifiers: Iterable[str]) -> list[str]:
    """argv for installing ``specifiers`` with this interpreter's pip (no shell involved)."""
    return [sys.executable, "-m", "pip", "install", *specifiers]


def run_pip_command(specifiers: Iterable[str]) -> str:
    """The argument string for the WebUI's ``launch.run_pip`` (which runs it through a shell):
    ``'install "a>=1" "b>=2"'``. Double quotes work in POSIX shells and in cmd.exe."""
    return "install " + " ".join(f'"{spec}"' for spec in specifiers)
