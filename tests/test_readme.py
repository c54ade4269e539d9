"""The README's promises: its Python example runs and prints what it says; its commands exist."""
import contextlib
import io
import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_use_from_python_example_runs_and_prints_what_it_claims():
    block = re.search(r"## Use from Python.*?```python\n(.*?)```", README, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    first = out.getvalue().splitlines()[0]
    assert first == "torch.Size([16, 2]) 10"


def test_ci_runs_the_readme_commands():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    install = re.search(r"## Install and test.*?```bash\n(.*?)\n```", README, re.S).group(1).strip()
    run = re.search(r"## Run the benchmark.*?```bash\n(.*?)\n```", README, re.S).group(1).strip()
    lines = [line.strip() for line in ci.splitlines()]
    assert any(line.startswith(install) for line in lines)
    assert any(line.startswith(run + " ") or line == run for line in lines)  # CI may add --results/--quiet


def test_every_results_column_is_documented():
    from bench.schema import COLUMNS
    table = re.search(r"## What is measured: a results row(.*?)\n## ", README, re.S).group(1)
    missing = [c for c in COLUMNS if f"`{c}`" not in table]
    assert not missing, f"columns missing from the README's schema table: {missing}"

