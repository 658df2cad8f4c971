"""The side-by-side performance benchmark: `python -m moelab.bench` (`make bench`)."""

import sys

from moelab.bench.cli import main

sys.exit(main())
