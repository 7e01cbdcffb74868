"""python -m conformance.hostile: see the package docstring."""

import sys

from conformance.hostile.run import main

sys.exit(main())
