"""What every command-line entry point shares: one-line errors, exit codes, the console."""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console

from recon.errors import InputError

console = Console(stderr=True)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; bad input becomes one red line on stderr and exit status 2, Ctrl-C exit 130."""
    try:
        code = main()
    except InputError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(int(code or 0))
