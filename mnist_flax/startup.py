"""Ctrl-C while a command starts: one line and exit code 130, even before the heavy libraries load.

Imports nothing beyond the standard library, so a command can install it first of all.
"""

import os
import signal
import sys

INTERRUPTED_EXIT = 128 + signal.SIGINT


def exit_on_interrupt(prog: str) -> None:
  """Makes Ctrl-C end the process with `PROG: interrupted` on stderr and exit code 130.

  For commands whose outputs are written whole or not at all, so stopping anywhere loses nothing.
  """

  def handler(signum, frame) -> None:
    del signum, frame
    sys.stderr.write(f"{prog}: interrupted\n")
    sys.stderr.flush()
    try:
      sys.stdout.flush()
    except (OSError, ValueError):
      pass
    os._exit(INTERRUPTED_EXIT)  # Not sys.exit: unwinding beside XLA's running threads has segfaulted.

  signal.signal(signal.SIGINT, handler)
