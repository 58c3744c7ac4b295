"""The error type for bad input: a one-line message, reported without a traceback."""


class UsageError(Exception):
  """Invalid config or missing data, detected before any work is done."""
