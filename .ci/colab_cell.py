"""Prints README.md's Colab install cell as a bash script, line for line, for CI's Colab stand-ins.

Usage: python .ci/colab_cell.py README.md REPO CONTENT

`!command` lines run as they are, `%cd` becomes `cd`, `NAME = "value"` sets a shell variable that
`{NAME}` reads, and other Python lines run with `python -c`. The cell's repository URL is replaced by
REPO (a local clone source) and `/content` by CONTENT, the only two changes.
"""

import re
import shlex
import sys

MARKER = "<!-- colab-install-cell"


def cell_lines(readme: str) -> list[str]:
  """The lines of the first fenced block after the marker."""
  text = readme[readme.index(MARKER) :]
  block = re.search(r"```python\n(.*?)```", text, re.DOTALL)
  if block is None:
    sys.exit(f"no ```python block after {MARKER}")
  return block.group(1).splitlines()


def to_bash(lines: list[str], repo: str, content: str) -> list[str]:
  """The cell as bash lines."""
  out = ["set -euo pipefail"]
  for line in lines:
    line = line.replace("/content", content)
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if line.startswith("!"):
      out.append(re.sub(r"\{(\w+)\}", r'"${\1}"', line[1:]))
    elif line.startswith("%cd "):
      out.append(f"cd {line[4:]}")
    elif m := re.fullmatch(r'(\w+) = "([^"]*)"(\s*#.*)?', line):
      out.append(f"{m.group(1)}={shlex.quote(repo if m.group(1) == 'REPO' else m.group(2))}")
    else:
      out.append(f"python -c {shlex.quote(line)}")
  return out


if __name__ == "__main__":
  readme, repo, content = sys.argv[1:]
  print("\n".join(to_bash(cell_lines(open(readme).read()), repo, content)))
