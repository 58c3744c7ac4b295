"""The error type for bad input: a one-line message, reported without a traceback."""


class UsageError(Exception):
  """Invalid config or missing data, detected before any work is done."""


def describe(e: BaseException, whole: bool = False, with_type: bool = False) -> str:
  """An exception as one line: its message's first line (every line if `whole`), spaces collapsed.

  The type's name where the message is empty; `with_type` puts it first (`ValueError: boom`).
  """
  lines = str(e).strip().splitlines()
  text = " ".join(" ".join(lines if whole else lines[:1]).split())
  if not text:
    return type(e).__name__
  return f"{type(e).__name__}: {text}" if with_type else text


def config_field_error(e: BaseException) -> tuple[str, str] | None:
  """The field and ml_collections' hint ("Did you mean ...?", or "") of a ConfigDict's missing-field error.

  None for any other exception. ml_collections raises a KeyError whose text is the quoted name, a
  newline and the hint, wrapped in an AttributeError for attribute access.
  """
  while isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    e = e.args[0]
  if not (isinstance(e, KeyError) and e.args and isinstance(e.args[0], str)):
    return None
  name, _, hint = e.args[0].partition("\n")
  return name.strip("'\""), hint.strip()
