"""Errors that reach the user as one line.

Anything wrong with what a user handed us (a file, a folder, a flag) raises :class:`InputError`
naming the file and the problem. The command-line entry points turn it into one line on stderr and
exit status 2, without a traceback (``recon.cli.common.run_cli``).
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: ``InputError(path, problem)`` prints as ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
