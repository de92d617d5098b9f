"""The oldest supported versions are one set of numbers: pyproject.toml's, the spec's, CI's.

pyproject.toml says what pip may install (floor and ceiling), the spec what a
distribution's package must offer (or what the package bundles instead), and
.ci/floor-constraints.txt what CI's second run installs exactly: a floor raised
in one place and not the others would be a floor nobody tests.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

TOP = Path(__file__).resolve().parents[2]
SPEC = (TOP / "packaging" / "rpm" / "xfrmid.spec").read_text()
# the libraries whose internals xfrmid uses (guard tests): each needs a ceiling
INTERNALS_USED = ("pyroute2", "dbus-fast")


def _pyproject() -> dict[str, Requirement]:
    data = tomllib.loads((TOP / "pyproject.toml").read_text())
    return {(req := Requirement(line)).name: req for line in data["project"]["dependencies"]}


def _bound(requirement: Requirement, operator: str) -> str:
    (found,) = [spec.version for spec in requirement.specifier if spec.operator == operator]
    return found


def _ci_pins() -> dict[str, str]:
    pins = {}
    for line in (TOP / ".ci" / "floor-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def _spec_global(name: str) -> str:
    return re.search(rf"^%global\s+{name}\s+(\S+)$", SPEC, re.M).group(1)


def test_ci_installs_exactly_the_floors_of_pyproject():
    floors = {name: _bound(req, ">=") for name, req in _pyproject().items()}
    assert _ci_pins() == floors


def test_the_spec_names_the_same_floors():
    requirements = _pyproject()
    for name in INTERNALS_USED:
        assert _spec_global(f"{name.replace('-', '_')}_floor") == _bound(requirements[name], ">="), name


def test_libraries_whose_internals_xfrmid_uses_have_a_ceiling_below_the_next_minor():
    requirements = _pyproject()
    for name in INTERNALS_USED:
        floor, ceiling = Version(_bound(requirements[name], ">=")), Version(_bound(requirements[name], "<"))
        assert floor < ceiling and ceiling.micro == 0, f"{name}: {requirements[name]}"


def test_what_the_spec_bundles_is_within_the_supported_range():
    requirements = _pyproject()
    for name in INTERNALS_USED:
        bundled = _spec_global(f"{name.replace('-', '_')}_bundled")
        assert requirements[name].specifier.contains(bundled), f"{name} {bundled}: {requirements[name]}"


def test_ci_runs_the_floor_venv_from_that_file():
    makefile = (TOP / "Makefile").read_text()
    assert "FLOORS := .ci/floor-constraints.txt" in makefile
    assert "-c $(FLOORS)" in makefile and "$(MAKE) test-floor" in makefile
