"""The one error type of the scanner: every bad input (corrupt layer, digest mismatch, bad advisory) raises
ScanError (a ValueError) with a message that names the input and what is wrong with it."""

from __future__ import annotations


class ScanError(ValueError):
    pass
