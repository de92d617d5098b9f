"""Fail unless a JUnit XML report shows tests that all passed, none skipped.

usage: check_report.py REPORT.xml [MIN_TESTS]
"""

import sys
import xml.etree.ElementTree as ET


def main() -> int:
    path = sys.argv[1]
    minimum = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"check_report: no usable report at {path}: {exc}", file=sys.stderr)
        return 1
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = counts["failures"] + counts["errors"]
    print(f"kernel: {passed} passed, {failed} failed, {counts['skipped']} skipped")
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            print(f"  skipped: {case.get('classname')}::{case.get('name')}", file=sys.stderr)
    if failed or counts["skipped"] or counts["tests"] < minimum:
        print(
            f"check_report: kernel tests must all pass with none skipped (at least {minimum}).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
