import pytest

from mnist_flax.errors import describe


@pytest.mark.parametrize(
  ("error", "with_type", "expected"),
  [
    (ValueError("boom\nsecond line"), False, "boom"),
    (ValueError("  spread   over\tspaces "), False, "spread over spaces"),
    (ValueError(""), False, "ValueError"),
    (OSError("disk full"), True, "OSError: disk full"),
    (KeyError(), True, "KeyError"),
  ],
)
def test_an_error_in_one_line(error, with_type, expected):
  assert describe(error, with_type=with_type) == expected
  assert describe(ValueError("boom\n  second   line"), whole=True) == "boom second line"
