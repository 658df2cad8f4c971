"""Run a sweep from the command line: `python -m moelab.sweep`."""

import sys

from moelab.sweep.runner import main

sys.exit(main())
