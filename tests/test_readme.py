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


def test_ci_runs_every_readme_block_in_order():
    """CI runs the README's bash blocks in order (.ci/readme_blocks.py); the first two are install+test and the main job."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text()
    assert "python3 .ci/readme_blocks.py README.md" in ci
    spec = importlib.util.spec_from_file_location("readme_blocks", root / ".ci" / "readme_blocks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    blocks = mod.blocks(README)
    install = re.search(r"## Install and test.*?```bash\n(.*?)\n```", README, re.S).group(1).strip()
    run = re.search(r"## Run the benchmark.*?```bash\n(.*?)\n```", README, re.S).group(1).strip()
    assert [b[0].strip() for b in blocks[:2]] == [install, run] and blocks[0][1] is None and blocks[1][1] is None
    skipped = [b for b in blocks if b[1]]
    assert all("GPU" in reason or "machines" in reason for _, reason in skipped), skipped
    assert len(blocks) - len(skipped) >= 5  # install+test, run, a sharded run, report, check


def test_every_results_column_is_documented():
    from bench.schema import COLUMNS
    table = re.search(r"## What is measured: a results row(.*?)\n## ", README, re.S).group(1)
    missing = [c for c in COLUMNS if f"`{c}`" not in table]
    assert not missing, f"columns missing from the README's schema table: {missing}"

