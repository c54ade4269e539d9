"""Layering: ``samplers`` never imports ``pretrained`` (nor ``bench``): samplers know models, not checkpoints."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SAMPLERS = Path(__file__).resolve().parents[1] / "samplers"
UPPER = ("pretrained", "bench")


def _imports(path: Path) -> list[str]:
    """Every module a file imports (top level, in functions and in try blocks alike)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_samplers_source_never_imports_upward():
    files = sorted(SAMPLERS.rglob("*.py"))
    assert len(files) > 10 and SAMPLERS / "students.py" in files
    upward = {f"{p.relative_to(SAMPLERS)}: {m}" for p in files for m in _imports(p) if m.split(".")[0] in UPPER}
    assert not upward


def test_import_finds_an_upward_import(tmp_path):
    """The scan above can fail: it sees an import hidden in a function body."""
    f = tmp_path / "x.py"
    f.write_text("def g():\n    try:\n        from pretrained.registry import available\n    except ImportError:\n"
                 "        pass\n")
    assert _imports(f) == ["pretrained.registry"]


def test_importing_every_sampler_loads_no_upper_layer():
    code = ("import sys, samplers, samplers.students; samplers.get('cd'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pretrained', 'bench'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=SAMPLERS.parent, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
