"""Bits per byte of text files under a trained model: `python -m moelab.evaluate`."""

import sys

from moelab.evaluate.cli import main

sys.exit(main())
