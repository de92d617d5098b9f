"""The Python side of macros.fedora-compat: what pyproject-rpm-macros' helper
scripts do on Fedora, reduced to what this project's spec uses.

    buildrequires    print BuildRequires from pyproject.toml and the backend (%pyproject_buildrequires)
    installed        tidy a pip-installed buildroot like %pyproject_install
    save-files       write the %files list of the Python package (%pyproject_save_files)
    check-import     import every installed module from the buildroot (%pyproject_check_import)
    shebang-fix      point scripts at the target's interpreter (%py3_shebang_fix)
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path


def _python3dist(requirement: str) -> list[str]:
    """'setuptools>=61' -> ['python3dist(setuptools) >= 61'] (simple specifiers only)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;.*)?", requirement)
    if not match:
        raise SystemExit(f"cannot convert requirement {requirement!r}")
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    specs = [s.strip() for s in match.group(2).split(",") if s.strip()]
    if not specs:
        return [f"python3dist({name})"]
    lines = []
    for spec in specs:
        op, version = re.fullmatch(r"(==|>=|<=|>|<|!=|~=)\s*(\S+)", spec).groups()
        if op == "~=":
            lines.append(f"python3dist({name}) >= {version}")
        elif op != "!=":
            lines.append(f"python3dist({name}) {'=' if op == '==' else op} {version}")
    return lines


def buildrequires(_: argparse.Namespace) -> None:
    build_system = tomllib.loads(Path("pyproject.toml").read_text()).get("build-system", {})
    requires = list(build_system.get("requires", ["setuptools>=40.8", "wheel"]))
    backend = build_system.get("build-backend", "setuptools.build_meta:__legacy__")
    try:  # what the backend itself asks for (setuptools < 70 asks for wheel)
        module = importlib.import_module(backend.split(":")[0])
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the requirement list
            requires += module.get_requires_for_build_wheel()
    except ImportError:
        pass  # backend not installed yet: the first round lists it
    for requirement in dict.fromkeys(requires):
        for line in _python3dist(requirement):
            print(line)


def _dist_info(sitelib: Path) -> Path:
    (found,) = sitelib.glob("*.dist-info")
    return found


def installed(args: argparse.Namespace) -> None:
    sitelib = Path(args.root + args.sitelib)
    dist_info = _dist_info(sitelib)
    # As on Fedora: keep RECORD's list for save-files, drop what describes pip's install.
    record = dist_info / "RECORD"
    files = [line.split(",")[0] for line in record.read_text().splitlines() if line]
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text("\n".join(files) + "\n")
    record.unlink()
    (dist_info / "direct_url.json").unlink(missing_ok=True)
    (dist_info / "INSTALLER").write_text("rpm\n")
    for cache in Path(args.root).rglob("__pycache__"):
        if cache.parent.name == "bin":
            for item in cache.iterdir():
                item.unlink()
            cache.rmdir()


def save_files(args: argparse.Namespace) -> None:
    sitelib = Path(args.root + args.sitelib)
    dist_info = _dist_info(sitelib)
    lines = []
    patterns = [p for p in args.globs if not p.startswith("+")]
    for entry in sorted(sitelib.iterdir()):
        module = entry.stem if entry.suffix == ".py" else entry.name
        if entry == dist_info or not any(fnmatch.fnmatch(module, p) for p in patterns):
            continue
        lines.append(f"{args.sitelib}/{entry.name}" + ("/" if entry.is_dir() else ""))
    if not lines:
        raise SystemExit(f"no module matches {patterns} in {sitelib}")
    lines.append(f"%dir {args.sitelib}/{dist_info.name}")
    licenses = 0
    for item in sorted(dist_info.rglob("*")):
        path = f"{args.sitelib}/{item.relative_to(sitelib)}"
        if item.is_dir():
            lines.append(f"%dir {path}")
        elif "licenses" in item.relative_to(dist_info).parts or re.match(r"(LICEN[CS]E|COPYING)", item.name):
            lines.append(f"%license {path}")
            licenses += 1
        else:
            lines.append(path)
    if args.assert_license and not licenses:
        raise SystemExit("-l given but the wheel carries no license file")
    Path(args.output).write_text("\n".join(lines) + "\n")


def check_import(args: argparse.Namespace) -> None:
    sitelib = Path(args.root + args.sitelib)
    modules = []
    for line in Path(args.files).read_text().splitlines():
        if line.startswith("%") or ".dist-info" in line:
            continue
        path = Path(args.root + line.rstrip("/"))
        if path.is_dir():
            for source in sorted(path.rglob("*.py")):
                parts = source.relative_to(sitelib).with_suffix("").parts
                modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        elif path.suffix == ".py":
            modules.append(path.stem)
    failures = 0
    for name in modules:
        if any(fnmatch.fnmatch(name, pattern) for pattern in args.exclude):
            continue
        module = importlib.import_module(name)
        if not str(module.__file__).startswith(str(sitelib)):
            print(f"{name} was imported from {module.__file__}, not the buildroot", file=sys.stderr)
            failures += 1
        else:
            print(f"Check import: {name}")
    if failures:
        raise SystemExit(1)


def shebang_fix(args: argparse.Namespace) -> None:
    for name in args.paths:
        path = Path(name)
        if not path.is_file():
            continue
        data = path.read_bytes()
        first, newline, rest = data.partition(b"\n")
        if first.startswith(b"#!") and b"python" in first:
            path.write_bytes(f"#!{args.interpreter} -{args.flags}".encode() + newline + rest)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("buildrequires").set_defaults(run=buildrequires)
    p = sub.add_parser("installed")
    p.set_defaults(run=installed)
    p.add_argument("--root", required=True)
    p.add_argument("--sitelib", required=True)
    p.add_argument("--record", required=True)
    p = sub.add_parser("save-files")
    p.set_defaults(run=save_files)
    for option in ("--root", "--sitelib", "--record", "--output"):
        p.add_argument(option, required=True)
    p.add_argument("--assert-license", action="store_true")
    p.add_argument("globs", nargs="+")
    p = sub.add_parser("check-import")
    p.set_defaults(run=check_import)
    for option in ("--root", "--sitelib", "--files"):
        p.add_argument(option, required=True)
    p.add_argument("--exclude", action="append", default=[])
    p = sub.add_parser("shebang-fix")
    p.set_defaults(run=shebang_fix)
    p.add_argument("--interpreter", required=True)
    p.add_argument("--flags", default="")
    p.add_argument("paths", nargs="*")
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    os.umask(0o022)
    main()
