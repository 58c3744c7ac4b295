"""The error type for bad input: a one-line message, reported without a traceback."""


class UsageError(Exception):
  """Invalid config or missing data, detected before any work is done."""


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
