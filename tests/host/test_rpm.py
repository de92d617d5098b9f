"""Build the RPM from an sdist with Debian's rpmbuild and lint it like Fedora does.

Fedora-only macros (pyproject-rpm-macros, python-rpm-macros,
systemd-rpm-macros) come from tests/host/rpm/macros.fedora-compat, loaded
with --load; the spec itself is what Fedora would build. %generate_buildrequires
runs as in mock: what it lists is installed (here: into the venv with pip)
before the build. The spec is built as each kind of supported distribution
would build it: Fedora 45 (its own pyroute2 and dbus-fast; %check runs the
host tests), Fedora 43 (pyroute2 bundled) and RHEL 10 (pyroute2 and dbus-fast
bundled, the group created by a %pre scriptlet).
"""

from __future__ import annotations

import importlib.metadata
import os
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
BUILD_BUDGET = 60.0  # seconds for rpmbuild -bb, without %check
# target: (rpm --define, the libraries it bundles, whether %check runs here)
TARGETS = {
    "fedora45": ({"fedora": "45"}, (), True),
    "fedora43": ({"fedora": "43"}, ("pyroute2",), False),
    "rhel10": ({"rhel": "10"}, ("pyroute2", "dbus-fast"), False),
}
SOURCE_CACHE = TOP / "build" / "rpm-sources"  # the bundled libraries' sdists, fetched once


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
    wanted = []
    for line in filter(None, lines):
        name, spec = re.fullmatch(r"python3dist\(([^)]+)\)\s*(.*)", line).groups()
        wanted.append(name + spec.replace(" ", ""))
    _install_missing(wanted)


def _install_missing(requirements: list[str]) -> None:
    missing = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    if missing:
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", *missing], check=True, timeout=600)


def _spec_global(name: str) -> str:
    return re.search(rf"^%global\s+{name}\s+(\S+)", SPEC.read_text(), re.M).group(1)


# the spec's Source2 and Source3: pyroute2's (pure Python) wheel, dbus-fast's sdist
BUNDLED_FORMS = {"pyroute2": ("--only-binary", "py3-none-any.whl"), "dbus-fast": ("--no-binary", "tar.gz")}


def _bundled_sources(libraries: tuple[str, ...], sources: Path) -> None:
    """The bundled libraries' files as the spec names them, fetched with pip once."""
    for library in libraries:
        version = _spec_global(f"{library.replace('-', '_')}_bundled")
        option, suffix = BUNDLED_FORMS[library]
        pattern = f"{library.replace('-', '_')}-{version}*{suffix}"
        SOURCE_CACHE.mkdir(parents=True, exist_ok=True)
        if not list(SOURCE_CACHE.glob(pattern)):
            # an sdist's build backend must be installed for pip to read its metadata
            subprocess.run([PYTHON, "-m", "pip", "download", "-q", "--no-deps", option, ":all:",
                            "--no-build-isolation", "-d", str(SOURCE_CACHE), f"{library}=={version}"],
                           check=True, timeout=600)
        (found,) = SOURCE_CACHE.glob(pattern)
        shutil.copy(found, sources / found.name)


def _unspaced(workdir: Path, path: str | Path) -> Path:
    """``path`` (inside the checkout) through a symlink to the checkout without spaces: rpm's
    macros paste %__python3 and %_harnessdir into shell commands unquoted."""
    link = workdir / "checkout"
    if not link.is_symlink():
        link.symlink_to(TOP)
    path = Path(path)
    return link / path.relative_to(TOP) if path.is_relative_to(TOP) else path


def _rpmbuild(workdir: Path, defines: dict[str, str], check: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _tool("rpmbuild"), "-bb", "--nodeps", *([] if check else ["--nocheck"]),
            "--load", str(HARNESS / "macros.fedora-compat"),
            "--define", f"_topdir {workdir / 'rpmbuild'}",
            "--define", f"__python3 {_unspaced(workdir, PYTHON)}",
            "--define", f"_harnessdir {_unspaced(workdir, HARNESS)}",
            *(arg for key, value in defines.items() for arg in ("--define", f"{key} {value}")),
            str(SPEC),
        ],
        capture_output=True, text=True, timeout=900,
        # %check's pytest keeps its temporary files apart: pytest prunes old ones in its
        # default place, which would take this test's own away
        env={**os.environ, "PYTEST_DEBUG_TEMPROOT": str(workdir / "check-tmp")},
    )


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sdist")
    found = _sdist(workdir, workdir)
    assert found.name == f"xfrmid-{_version()}.tar.gz"
    _install_buildrequires(found, workdir)
    return found


@pytest.fixture(scope="module", params=list(TARGETS))
def built(request, sdist, tmp_path_factory):
    target = request.param
    defines, bundled, check = TARGETS[target]
    workdir = tmp_path_factory.mktemp(f"rpm-{target}")
    (workdir / "check-tmp").mkdir()
    sources = workdir / "rpmbuild" / "SOURCES"
    sources.mkdir(parents=True)
    shutil.copy(sdist, sources / sdist.name)
    shutil.copy(TOP / "systemd" / "xfrmid.sysusers", sources / "xfrmid.sysusers")
    if "dbus-fast" in bundled:  # what mock installs for this target: its build backend
        _install_missing(["poetry-core"])
    _bundled_sources(bundled, sources)
    started = time.monotonic()
    result = _rpmbuild(workdir, defines, check)
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    (workdir / "rpmbuild.log").write_text(log)
    (TOP / "build" / f"rpmbuild-{target}.log").write_text(log)
    assert result.returncode == 0, log[-5000:]
    (rpm,) = (workdir / "rpmbuild" / "RPMS" / "noarch").glob("xfrmid-*.noarch.rpm")
    print(f"{target}: rpmbuild -bb took {seconds:.1f} s")
    return {"target": target, "rpm": rpm, "log": log, "seconds": seconds, "workdir": workdir,
            "bundled": bundled, "check": check, "fedora": "fedora" in defines}


def _query(rpm: Path, *args: str) -> str:
    return subprocess.run(
        [_tool("rpm"), "-qp", *args, str(rpm)], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_build_is_quick(built, record_property):
    record_property(f"rpmbuild_seconds_{built['target']}", round(built["seconds"], 1))
    if not built["check"]:
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


def test_source_is_a_url():
    assert re.search(r"^Source0:\s+%\{pypi_source %\{name\}\}$", SPEC.read_text(), re.M)


def test_file_list(built):
    files = set(_query(built["rpm"], "-l").split())
    wanted = [
        "/usr/bin/xfrmid",
        "/usr/bin/xfrmctl",
        "/usr/lib/systemd/system/xfrmid.service",
        "/usr/lib/systemd/system/xfrmid.service.d/notify-reload.conf",
        "/usr/lib/sysusers.d/xfrmid.conf",
        "/usr/lib/modules-load.d/xfrmid.conf",
        "/usr/share/dbus-1/system.d/org.xfrmid1.conf",
        "/usr/share/dbus-1/system-services/org.xfrmid1.service",
        "/usr/share/dbus-1/interfaces/org.xfrmid1.xml",
        "/etc/xfrmid/xfrmid.conf",
        "/usr/share/iproute2/rt_protos.d/xfrmid.conf",  # iproute2 >= 6.5 reads it there
        "/usr/share/man/man8/xfrmid.8.gz",
        "/usr/share/man/man8/xfrmctl.8.gz",
        "/usr/share/man/man5/xfrmid.conf.5.gz",
        # beside the host's network managers
        "/usr/lib/systemd/networkd.conf.d/xfrmid.conf",
        "/usr/lib/systemd/network/05-xfrmid.network",
        "/usr/lib/NetworkManager/conf.d/xfrmid.conf",
        # NetworkManager's VPN plugin
        "/usr/lib/NetworkManager/VPN/nm-xfrmid-service.name",
        "/usr/share/dbus-1/system.d/nm-xfrmid-service.conf",
        "/usr/libexec/nm-xfrmid-service",
    ]
    wanted += [f"/usr/share/xfrmid/bundled/{lib.replace('-', '_')}/__init__.py" for lib in built["bundled"]]
    for path in wanted:
        assert path in files, f"{path} is not in the RPM"
    assert not any(path.startswith("/usr/share/xfrmid") for path in files) or built["bundled"]
    sitelib = [f for f in files if re.search(r"/usr/lib/python3\.\d+/site-packages/xfrmid/config\.py$", f)]
    assert sitelib, "the Python package is not in the RPM"
    assert any(f.endswith(".dist-info/LICENSE") for f in files)


def test_config_is_noreplace_and_license_marked(built):
    flags = dict(
        line.rsplit(" ", 1)
        for line in _query(built["rpm"], "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    )
    assert "c" in flags["/etc/xfrmid/xfrmid.conf"] and "n" in flags["/etc/xfrmid/xfrmid.conf"]
    assert any(path.endswith("LICENSE") and "l" in flag for path, flag in flags.items())
    assert any(path.endswith("README.md") and "d" in flag for path, flag in flags.items())


def _floor(name: str) -> str:
    return _spec_global(f"{name.replace('-', '_')}_floor")


def test_metadata(built):
    info = _query(built["rpm"], "--qf", "%{NAME} %{ARCH} %{LICENSE}\n").strip()
    licenses = {"pyroute2": "(GPL-2.0-or-later OR Apache-2.0)", "dbus-fast": "MIT"}
    assert info == " AND ".join(["xfrmid noarch GPL-2.0-or-later", *(licenses[b] for b in built["bundled"])])
    requires = _query(built["rpm"], "--requires")
    provides = _query(built["rpm"], "--provides")
    assert re.search(r"python3(\.\d+)?dist\(systemd-python\) >= 235", requires), requires
    for dependency in ("pyroute2", "dbus-fast"):
        needed = re.findall(rf"python3(?:\.\d+)?dist\({dependency}\) ([<>=]+ [\w.]+)", requires)
        if dependency in built["bundled"]:
            assert not needed, requires  # the bundled copy serves it
            version = _spec_global(f"{dependency.replace('-', '_')}_bundled")
            assert f"bundled(python3dist({dependency})) = {version}" in provides, provides
        else:  # the floor, and a ceiling below the next minor release
            assert f">= {_floor(dependency)}" in needed and any(n.startswith("< ") for n in needed), requires
    assert "dbus-common" in requires
    assert ("shadow-utils" in requires) == (not built["fedora"])


def test_scriptlets(built):
    scripts = _query(built["rpm"], "--scripts")
    # Fedora's rpm creates the group from the sysusers.d file; RHEL 10's needs a %pre
    assert ("groupadd -r 'xfrmid'" in scripts) == (not built["fedora"])
    if not built["fedora"]:
        pre = scripts.split("preinstall scriptlet")[1].split("scriptlet")[0]
        assert "groupadd -r 'xfrmid'" in pre
    assert "install-system-units xfrmid.service" in scripts
    assert "remove-system-units xfrmid.service" in scripts
    assert "mark-restart-system-units xfrmid.service" in scripts


def test_check_ran_the_host_tests(built):
    if not built["check"]:
        return  # built with --nocheck here; fedora45 shows that %check passes
    imported = set(re.findall(r"^Check import: (\S+)$", built["log"], re.M))
    assert {"xfrmid", "xfrmid.config", "xfrmid.journal", "xfrmid.notify"} <= imported
    summary = re.findall(r"^(\d+) passed", built["log"], re.M)
    assert summary and int(summary[-1]) > 300, built["log"][-3000:]


def _payload(built) -> Path:
    out = built["workdir"] / "payload"
    if not out.exists():
        out.mkdir()
        cpio = subprocess.run(["rpm2cpio", str(built["rpm"])], capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=out, check=True, timeout=60)
    return out


def test_payload(built):
    out = _payload(built)
    assert (out / "usr/bin/xfrmid").read_text().splitlines()[0] == "#!/usr/bin/python3 -sP"
    assert (out / "usr/lib/systemd/system/xfrmid.service").read_text() == (TOP / "systemd/xfrmid.service").read_text()
    assert (out / "usr/lib/systemd/system/xfrmid.service.d/notify-reload.conf").read_text() == (
        TOP / "systemd/notify-reload.conf").read_text()
    assert (out / "etc/xfrmid/xfrmid.conf").read_text() == (TOP / "packaging/xfrmid.conf").read_text()


def test_bundled_libraries_come_first_for_xfrmids_programs(built):
    if not built["bundled"]:
        return
    out = _payload(built)
    for script in ("xfrmid", "xfrmctl", "xfrmid-updown"):
        assert 'sys.path.insert(0, "/usr/share/xfrmid/bundled")' in (out / "usr/bin" / script).read_text()
    # the script as installed, its bundled directory moved to where the payload is
    script = built["workdir"] / "xfrmid"
    script.write_text((out / "usr/bin/xfrmid").read_text().replace("/usr/share/xfrmid/bundled",
                                                                   str(out / "usr/share/xfrmid/bundled")))
    sitelib = next(out.glob("usr/lib/python3.*/site-packages"))
    done = subprocess.run([PYTHON, str(script), "--version"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(sitelib)})
    assert done.returncode == 0, done.stderr
    for library in built["bundled"]:
        assert f"{library} {_spec_global(library.replace('-', '_') + '_bundled')}" in done.stdout, done.stdout
