"""Build the RPM from an sdist with Debian's rpmbuild and lint it like Fedora does.

Fedora-only macros (pyproject-rpm-macros, python-rpm-macros,
systemd-rpm-macros) come from tests/host/rpm/macros.fedora-compat, loaded
with --load; the spec itself is what Fedora would build. %generate_buildrequires
runs as in mock: what it lists is installed (here: into the venv with pip)
before the build.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
HARNESS = TOP / "tests" / "host" / "rpm"
SPEC = TOP / "packaging" / "rpm" / "xfrmid.spec"
PYTHON = sys.executable
BUILD_BUDGET = 60.0  # seconds for rpmbuild -bb


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run 'make deps'")
    return path


def _version() -> str:
    return re.search(r"^Version:\s*(\S+)", SPEC.read_text(), re.M).group(1)


def _sdist(workdir: Path, sources: Path) -> Path:
    """The sdist of the working tree, built from a clean copy (no egg-info left behind)."""
    tree = workdir / "tree"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=TOP, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = TOP / name
        if source.is_file() and not name.startswith("build/"):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run([PYTHON, "-c", code, str(sources)], cwd=tree, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return sources / result.stdout.strip().splitlines()[-1]


def _install_buildrequires(sdist: Path, workdir: Path) -> None:
    """What %generate_buildrequires asks for, installed the way mock would (dnf here: pip)."""
    with tarfile.open(sdist) as archive:
        # filter= exists from Python 3.11.4 on; older ones extract as before.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(workdir / "unpacked", **extra)
    (unpacked,) = (workdir / "unpacked").iterdir()
    lines = subprocess.run(
        [PYTHON, "-I", str(HARNESS / "pyproject_harness.py"), "buildrequires"],
        cwd=unpacked, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split("\n")
    missing = []
    for line in filter(None, lines):
        name, spec = re.fullmatch(r"python3dist\(([^)]+)\)\s*(.*)", line).groups()
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name + spec.replace(" ", ""))
    if missing:
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", *missing], check=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rpm")
    topdir = workdir / "rpmbuild"
    sources = topdir / "SOURCES"
    sources.mkdir(parents=True)
    sdist = _sdist(workdir, sources)
    assert sdist.name == f"xfrmid-{_version()}.tar.gz"
    shutil.copy(TOP / "systemd" / "xfrmid.sysusers", sources / "xfrmid.sysusers")
    _install_buildrequires(sdist, workdir)
    started = time.monotonic()
    result = subprocess.run(
        [
            _tool("rpmbuild"), "-bb", "--nodeps",
            "--load", str(HARNESS / "macros.fedora-compat"),
            "--define", f"_topdir {topdir}",
            "--define", f"__python3 {PYTHON}",
            "--define", f"_harnessdir {HARNESS}",
            str(SPEC),
        ],
        capture_output=True, text=True, timeout=600,
    )
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    (workdir / "rpmbuild.log").write_text(log)
    assert result.returncode == 0, log[-5000:]
    (rpm,) = (topdir / "RPMS" / "noarch").glob("xfrmid-*.noarch.rpm")
    print(f"rpmbuild -bb took {seconds:.1f} s")
    return {"rpm": rpm, "log": log, "seconds": seconds, "workdir": workdir}


def _query(rpm: Path, *args: str) -> str:
    return subprocess.run(
        [_tool("rpm"), "-qp", *args, str(rpm)], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_build_is_quick(built, record_property):
    record_property("rpmbuild_seconds", round(built["seconds"], 1))
    assert built["seconds"] < BUILD_BUDGET


def test_rpmlint_reports_no_errors(built):
    result = subprocess.run(
        [_tool("rpmlint"), "-c", str(HARNESS / "rpmlint-fedora.toml"), str(built["rpm"])],
        capture_output=True, text=True, timeout=300,
    )
    summary = re.search(r"(\d+) errors, (\d+) warnings", result.stdout)
    assert summary, result.stdout + result.stderr
    assert summary.group(1) == "0", result.stdout
    assert result.returncode == 0, result.stdout


def test_spec_lints_clean():
    result = subprocess.run(
        [_tool("rpmlint"), "-c", str(HARNESS / "rpmlint-fedora.toml"), str(SPEC)],
        capture_output=True, text=True, timeout=300,
    )
    assert " 0 errors" in result.stdout and result.returncode == 0, result.stdout


def test_file_list(built):
    files = set(_query(built["rpm"], "-l").split())
    for path in [
        "/usr/bin/xfrmid",
        "/usr/bin/xfrmctl",
        "/usr/lib/systemd/system/xfrmid.service",
        "/usr/lib/sysusers.d/xfrmid.conf",
        "/usr/lib/modules-load.d/xfrmid.conf",
        "/usr/share/dbus-1/system.d/org.xfrmid1.conf",
        "/usr/share/dbus-1/system-services/org.xfrmid1.service",
        "/usr/share/dbus-1/interfaces/org.xfrmid1.xml",
        "/etc/xfrmid/xfrmid.conf",
        "/etc/iproute2/rt_protos.d/xfrmid.conf",
        "/usr/share/man/man8/xfrmid.8.gz",
        "/usr/share/man/man8/xfrmctl.8.gz",
        "/usr/share/man/man5/xfrmid.conf.5.gz",
    ]:
        assert path in files, f"{path} is not in the RPM"
    sitelib = [f for f in files if re.search(r"/usr/lib/python3\.\d+/site-packages/xfrmid/config\.py$", f)]
    assert sitelib, "the Python package is not in the RPM"
    assert any(f.endswith(".dist-info/LICENSE") for f in files)


def test_config_is_noreplace_and_license_marked(built):
    flags = dict(
        line.rsplit(" ", 1)
        for line in _query(built["rpm"], "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    )
    assert "c" in flags["/etc/xfrmid/xfrmid.conf"] and "n" in flags["/etc/xfrmid/xfrmid.conf"]
    assert "n" in flags["/etc/iproute2/rt_protos.d/xfrmid.conf"]
    assert any(path.endswith("LICENSE") and "l" in flag for path, flag in flags.items())
    assert any(path.endswith("README.md") and "d" in flag for path, flag in flags.items())


def test_metadata(built):
    info = _query(built["rpm"], "--qf", "%{NAME} %{ARCH} %{LICENSE}\n")
    assert info.strip() == "xfrmid noarch GPL-2.0-or-later"
    requires = _query(built["rpm"], "--requires")
    for dependency in ("pyroute2", "dbus-fast", "systemd-python"):
        assert re.search(rf"python3(\.\d+)?dist\({dependency}\)", requires), requires
    assert "dbus-common" in requires and "shadow-utils" in requires


def test_scriptlets(built):
    scripts = _query(built["rpm"], "--scripts")
    pre = scripts.split("preinstall scriptlet")[1].split("scriptlet")[0]
    assert "groupadd -r 'xfrmid'" in pre
    assert "install-system-units xfrmid.service" in scripts
    assert "remove-system-units xfrmid.service" in scripts
    assert "mark-restart-system-units xfrmid.service" in scripts


def test_check_imported_every_module(built):
    imported = set(re.findall(r"^Check import: (\S+)$", built["log"], re.M))
    assert {"xfrmid", "xfrmid.config", "xfrmid.journal", "xfrmid.notify"} <= imported


def test_payload(built):
    out = built["workdir"] / "payload"
    out.mkdir()
    cpio = subprocess.run(["rpm2cpio", str(built["rpm"])], capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=out, check=True, timeout=60)
    assert (out / "usr/bin/xfrmid").read_text().splitlines()[0] == "#!/usr/bin/python3 -sP"
    assert (out / "usr/lib/systemd/system/xfrmid.service").read_text() == (TOP / "systemd/xfrmid.service").read_text()
    assert (out / "etc/xfrmid/xfrmid.conf").read_text() == (TOP / "packaging/xfrmid.conf").read_text()
