"""Train and evaluate a forecaster from the command line: `python -m moelab.forecast`."""

import sys

from moelab.forecast.cli import main

sys.exit(main())
