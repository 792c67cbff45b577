"""Checks on output paths, made before any work so that a bad path costs nothing."""

from __future__ import annotations

import os


def check_output_dir(label: str, directory: str) -> None:
    """ValueError starting with `label` (the flag and its value) unless `directory` exists as a
    directory or can be created: no component of it may be a file, and its nearest existing
    ancestor must be writable. Nothing is created here."""
    probe = os.path.abspath(directory)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{label}: {probe} is a file, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{label}: {probe} is not writable by this user; choose another path "
                         f"or fix its permissions")
