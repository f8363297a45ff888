"""The build metadata lives in pyproject.toml (PEP 621): a wheel built from this checkout
carries the dependencies, extras, console scripts and package data it declares, pip builds
it through pyproject.toml (never the legacy ``setup.py`` path) and setup.py is only a shim,
so a dependency cannot be added in two places that drift apart.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Offline when this Python can build the wheel itself (as tests/test_install.py does).
HAS_BUILD_TOOLS = all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    """The wheel pip builds from a copy of the checkout (never builds inside the shared
    tree), and what pip said while building it."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "device", src / "device",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
            "-v", "-w", str(out), str(src)]
    if HAS_BUILD_TOOLS:
        args.insert(5, "--no-build-isolation")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [wheel] = out.glob("soca_appliance-*.whl")
    return zipfile.ZipFile(wheel), proc.stdout + proc.stderr


def metadata(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode("utf-8")


def test_pip_builds_through_pyproject_not_setup_py(built: tuple[zipfile.ZipFile, str]) -> None:
    _wheel, log = built
    assert "(pyproject.toml)" in log
    assert "setup.py develop" not in log and "setup.py install" not in log
    assert "Preparing metadata (setup.py)" not in log and "DEPRECATION" not in log


def test_wheel_metadata_is_pyprojects(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _log = built
    meta = Parser().parsestr(metadata(wheel, "METADATA"))
    project = PYPROJECT["project"]
    assert meta["Name"] == project["name"] and meta["Version"] == project["version"]
    assert meta["Requires-Python"] == project["requires-python"]
    requires = [r.replace(" ", "").replace('"', "'") for r in meta.get_all("Requires-Dist")]
    expected = [d.replace(" ", "") for d in project["dependencies"]]
    for extra, deps in project["optional-dependencies"].items():
        expected += [f"{d};extra=='{extra}'".replace(" ", "") for d in deps]
    assert sorted(requires) == sorted(expected)
    assert sorted(meta.get_all("Provides-Extra")) == ["assets", "test"]
    assert meta["Description-Content-Type"] == "text/markdown"


def test_wheel_has_the_console_scripts(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _log = built
    scripts = metadata(wheel, "entry_points.txt")
    assert "soca-appliance = soca_appliance.cli:main" in scripts
    assert "soca-diag = soca_appliance.diagnostics:main" in scripts


def test_wheel_has_every_package_and_the_package_data(built: tuple[zipfile.ZipFile,
                                                                   str]) -> None:
    wheel, _log = built
    names = set(wheel.namelist())
    device = ROOT / "device"
    for init in device.glob("soca_appliance/**/__init__.py"):
        assert init.relative_to(device).as_posix() in names      # subpackages, e.g. diagnostics
    assert "soca_appliance/diagnostics/__main__.py" in names
    for pattern in ("assets/*.mp3", "assets/*.wav", "assets/*.json", "web/static/*.html",
                    "web/static/*.css", "web/static/*.js"):
        files = list((device / "soca_appliance").glob(pattern))
        assert files, pattern
        for path in files:
            assert path.relative_to(device).as_posix() in names


def test_setup_py_is_only_a_shim() -> None:
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    for key in ("install_requires", "extras_require", "entry_points", "package_data"):
        assert key not in text, f"{key} belongs in pyproject.toml"
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
