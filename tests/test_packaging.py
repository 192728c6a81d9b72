"""What is shipped: the sdist holds the package, README and LICENSE and no tests (the suite
needs the whole repository, so it runs from a clone), and a wheel built from that sdist, as
pip builds one, holds the package and the LICENSE. Built offline from a copy of the tree."""

from __future__ import annotations

import configparser
import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from metrics_proxy import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "metrics_proxy"
# The sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
# What a checkout holds besides its tracked files: left out of the copy built from.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)
BUILD_TIMEOUT = 180


def _run(*argv: str, cwd: Path) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("clone") / "metrics_proxy"
    shutil.copytree(ROOT, tree, ignore=NOT_IN_A_CLONE)
    out = tmp_path_factory.mktemp("sdist")
    build = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
    _run(sys.executable, "-c", build, str(out), cwd=tree)
    (archive,) = out.glob("*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def wheel(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
        "--no-build-isolation", "--wheel-dir", str(out), str(sdist), cwd=out,
    )  # fmt: skip
    (built,) = out.glob("*.whl")
    return built


def sdist_files(sdist: Path) -> dict[str, bytes]:
    """Path inside the sdist's top directory → content, for every regular file."""
    with tarfile.open(sdist) as archive:
        found = {}
        for member in archive.getmembers():
            extracted = archive.extractfile(member)
            if extracted is not None:
                found[member.name.split("/", 1)[1]] = extracted.read()
        return found


def package_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_license_is_the_full_apache_2_0_text_the_metadata_names() -> None:
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0_SHA256
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    assert metadata["metadata"]["license"] == "Apache-2.0"
    assert metadata["metadata"]["license_files"].split() == ["LICENSE"]


def test_the_sdist_holds_the_package_readme_and_license_and_no_tests(sdist: Path) -> None:
    files = sdist_files(sdist)
    top = {name.split("/", 1)[0] for name in files}
    assert top == {
        "LICENSE", "MANIFEST.in", "PKG-INFO", "README.md", "metrics_proxy",
        "metrics_proxy.egg-info", "pyproject.toml", "setup.cfg",
    }  # fmt: skip
    assert package_files() <= files.keys()
    assert files["LICENSE"] == (ROOT / "LICENSE").read_bytes()
    info = HeaderParser().parsestr(files["PKG-INFO"].decode())
    assert info["Version"] == __version__


def test_a_wheel_built_from_the_sdist_holds_the_package_and_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {name.split("/", 1)[0] for name in names if ".dist-info/" in name}
        (license_file,) = [n for n in names if n.startswith(dist_info) and n.endswith("LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert dist_info == f"metrics_proxy-{__version__}.dist-info"
    assert {n.split("/", 1)[0] for n in names} == {"metrics_proxy", dist_info}
    assert package_files() <= names
    assert "aiohttp-proxy = metrics_proxy.cli:main" in entry_points
