"""Ctrl-C while a command starts: one line and exit code 130, even before the heavy libraries load.

Imports nothing beyond the standard library, so a command can install it first of all.
"""

import os
import signal
import sys
from typing import NoReturn

INTERRUPTED_EXIT = 128 + signal.SIGINT


def interrupted(prog: str) -> NoReturn:
  """Ends the process at once with `PROG: interrupted` on stderr and exit code 130."""
  sys.stderr.write(f"{prog}: interrupted\n")
  sys.stderr.flush()
  try:
    sys.stdout.flush()
  except (OSError, ValueError):
    pass
  os._exit(INTERRUPTED_EXIT)  # Not sys.exit: unwinding beside XLA's running threads has segfaulted.


def exit_on_interrupt(prog: str) -> None:
  """Makes Ctrl-C end the process with `PROG: interrupted` on stderr and exit code 130.

  For commands whose outputs are written whole or not at all, so stopping anywhere loses nothing.
  """

  def handler(signum, frame) -> None:
    del signum, frame
    interrupted(prog)

  signal.signal(signal.SIGINT, handler)
