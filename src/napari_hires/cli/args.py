"""Argument types shared by the sub-commands: argparse reports a bad value in one line with the usage."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    """A whole number above 0 (sizes, counts)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative(text: str) -> int:
    """A whole number of 0 or more (levels, offsets, overlaps)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
