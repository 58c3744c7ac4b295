"""The lower bounds of pyproject.toml's dependencies (and its `tf` extra), for CI's Colab stand-ins.

Usage:
  python .ci/lower_bounds.py missing FREEZE      `name==bound` for each dependency FREEZE lacks
  python .ci/lower_bounds.py check FREEZE...     fails unless each bound is a version one FREEZE holds

FREEZE is `pip list --format=freeze` output. `check` is what makes every lower bound a version that
a test run used.
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _name(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def bounds() -> dict[str, str]:
  """Dependency name -> its lower bound, for every requirement with `>=`."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  found = {}
  for requirement in project["dependencies"] + project["optional-dependencies"]["tf"]:
    m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
    if m is None:
      sys.exit(f"{requirement!r} has no lower bound")
    found[_name(m.group(1))] = m.group(2)
  return found


def _release(version: str) -> tuple[int, ...]:
  """`2.20` and `2.20.0` alike: the numbers, trailing zeros dropped."""
  numbers = [int(n) for n in re.findall(r"\d+", version)]
  while numbers and numbers[-1] == 0:
    numbers.pop()
  return tuple(numbers)


def installed(freeze: str) -> dict[str, str]:
  """Name -> version in a `pip list --format=freeze` file."""
  lines = pathlib.Path(freeze).read_text().splitlines()
  return {_name(n): v for n, _, v in (line.partition("==") for line in lines if "==" in line)}


def main(command: str, *freezes: str) -> int:
  """Runs `command`; returns the exit code."""
  if command == "missing":
    have = installed(freezes[0])
    tf = {"tensorflow", "tensorflow-cpu"}
    print("\n".join(f"{n}=={v}" for n, v in bounds().items() if n not in have and n not in tf))
    return 0
  versions = [installed(f) for f in freezes]
  untested = [
    f"{n}>={v}" for n, v in bounds().items() if not any(_release(d.get(n, "")) == _release(v) for d in versions)
  ]
  if untested:
    print(f"lower bounds no stand-in installed: {', '.join(untested)}")
    return 1
  print(f"each of the {len(bounds())} lower bounds was installed in a stand-in")
  return 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
