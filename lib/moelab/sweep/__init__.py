"""Sweeps: variants × seeds trained one at a time, their specs, results and statistics; the built-in studies."""
