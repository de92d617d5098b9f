"""Summarise py-spy's collapsed stacks (``bench.run --profile DIR``) per phase.

    python -m bench.profile_summary DIR/scale.txt [--phase attach] [--top 25]

A phase is a function name that must be on the stack (``create_interface``,
``delete_interface``, ``attach``, ``start``, ...; ``Manager.attach`` for one
class's). Prints, for the samples of
that phase, the functions with the largest inclusive share (time under them)
and self share (time in their own lines).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def short(frame: str) -> str:
    """``func (…/site-packages/pyroute2/x.py:12)`` -> ``pyroute2/x.py:func``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for anchor in ("site-packages/", "/xfrmid/", "/lib/python3"):
        if anchor in path:
            path = path.split(anchor, 1)[1] if anchor != "/xfrmid/" else "xfrmid/" + path.split(anchor, 1)[1]
            break
    return f"{path}:{m['func']}"


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        try:
            stacks.append(([short(f) for f in frames.split(";")], int(count)))
        except ValueError:
            continue
    return stacks


def summarise(stacks, phase: str | None, top: int) -> str:
    # py-spy names methods Class.method: "attach" matches Manager.attach too
    chosen = [(s, c) for s, c in stacks
              if phase is None or any(f.endswith((":" + phase, "." + phase)) for f in s)]
    total = sum(c for _, c in chosen)
    if not total:
        return f"no samples{' under ' + phase if phase else ''}"
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in chosen:
        for f in set(frames):
            inclusive[f] += count
        own[frames[-1]] += count
    lines = [f"{total} samples{' under ' + phase if phase else ''}", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile_summary", description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--phase", help="a function name that must be on the stack")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    try:
        print(summarise(load(args.file), args.phase, args.top))
    except BrokenPipeError:  # piped into head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
