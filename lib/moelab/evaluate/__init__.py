"""Evaluation: bits per byte of any text under a model."""
