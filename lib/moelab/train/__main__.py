"""Train a model from the command line: `python -m moelab.train`."""

import sys

from moelab.train.cli import main

sys.exit(main())
