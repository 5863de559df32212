"""Pulumi entry point (`main: infra/` in Pulumi.yaml): `pulumi up` runs this file."""

import sys
from pathlib import Path

# Pulumi runs this file with infra/ as the program directory; the repo root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import build  # after the path above

build()
