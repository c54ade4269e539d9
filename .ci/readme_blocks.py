"""Run every ```bash block of the README in order, as a new user following it would; stop at the first failure.

A block preceded by a line `<!-- not run by CI: REASON -->` is skipped (it needs GPUs or several machines).
Standard library only: the first block is the one that installs the package.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

SKIP = re.compile(r"<!-- not run by CI: (.+?) -->\s*$")


def blocks(text: str):
    """(command text, skip reason or None) for each ```bash block, in order."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            j = lines.index("```", i + 1)
            prev = lines[i - 1] if i else ""
            m = SKIP.search(prev)
            out.append(("\n".join(lines[i + 1:j]), m.group(1) if m else None))
            i = j
        i += 1
    return out


def main(readme: str) -> int:
    for k, (cmd, skip) in enumerate(blocks(Path(readme).read_text()), 1):
        if skip:
            print(f"--- README block {k}: skipped ({skip})\n{cmd}", flush=True)
            continue
        print(f"--- README block {k}:\n{cmd}", flush=True)
        start = time.time()
        rc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd]).returncode
        print(f"--- README block {k}: exit {rc} after {time.time() - start:.0f} s", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
