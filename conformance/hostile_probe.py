"""The mutation probe became the package conformance/hostile/ (issue 16): this name is kept
so that ``python -m conformance.hostile_probe --per-surface N`` and ``run`` keep working.
``--per-surface`` is now ``--requests``, counted per protocol."""

from __future__ import annotations

import sys

from conformance.hostile import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
