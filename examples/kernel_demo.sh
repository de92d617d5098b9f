#!/bin/bash
# The kernel layer alone, no daemon (run as root on a kernel with
# XFRM interfaces, e.g. `tests/vm/run examples/kernel_demo.sh`).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=${PYTHON:-$top/.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" examples/kernel_demo.py
