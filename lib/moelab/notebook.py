"""Small helpers the notebooks share: profiles and parameter checks.

A notebook's ``parameters`` cell holds literal defaults (papermill injects its
values after it); the next cell calls these helpers so bad values stop the run
with a clear message instead of failing deep inside.
"""

from __future__ import annotations

import os
from typing import Any

PROFILES = ("default", "tiny")
PROFILE_ENV = "MOELAB_PROFILE"


def resolve_profile(profile: str) -> str:
    """The profile to run: ``$MOELAB_PROFILE`` when set (tests set it to ``tiny``), else the parameter."""
    chosen = os.environ.get(PROFILE_ENV) or profile
    check_choice("profile", chosen, PROFILES)
    return chosen


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"parameter {name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and low < value < high):
        raise ValueError(f"parameter {name}={value!r} must be a number between {low} and {high} (exclusive)")
