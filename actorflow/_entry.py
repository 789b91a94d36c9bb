"""The ``actorflow`` command's entry point: handles Ctrl-C from its first moment.

Importing the command (click, the HTTP client, the runtime's settings) takes a few hundred
milliseconds; a Ctrl-C in that time would otherwise end in Python's KeyboardInterrupt
traceback. Until :func:`actorflow.cli.main` runs (which handles signals itself), SIGINT ends
the command at once, with one line and status 130.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"actorflow: interrupted\n")
    os._exit(130)  # nothing has started yet that needs stopping


def main() -> None:
    """Run the ``actorflow`` command with the process's arguments and exit with its status."""
    previous = signal.signal(signal.SIGINT, _interrupted)
    from actorflow.cli import main as command

    signal.signal(signal.SIGINT, previous)
    sys.exit(command())
