"""The README's quick start works when followed in order on a fresh checkout (issue 8).

It used to call ``ricordo`` right after an install line that never activates the venv (command
not found), and its Python snippet saved to ``state/v0``, which the shell quick start had just
written, so a newcomer following both got an error. The blocks are read from README.md, so the
README cannot drift from what is tested, and run verbatim (digits, 20 epochs: about 20 s on two
cores; no numbers are shortened).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "quickstart.py"
TIMEOUT_S = 600


def quick_start_blocks() -> tuple[str, str]:
    """The shell and the Python block of the README's section "Quick start"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    section = section[: section.index("\n## ", 1)]
    shell = re.search(r"```bash\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and python, "the quick start needs a ```bash and a ```python block"
    return shell.group(1), python.group(1)


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_example_file_is_the_readme_snippet() -> None:
    source = EXAMPLE.read_text(encoding="utf-8")
    docstring = ast.parse(source).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    code = "\n".join(source.splitlines()[docstring.end_lineno :]).lstrip("\n") + "\n"
    assert code == quick_start_blocks()[1]


def test_the_shell_block_activates_the_venv_first() -> None:
    commands = [
        line for line in quick_start_blocks()[0].splitlines() if line and line[0] not in " #"
    ]
    assert commands[0].startswith("source .venv/bin/activate"), commands[0]


def test_readme_quick_start_shell_then_python_in_a_fresh_folder(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip("the README installs into a virtual environment; this Python is not in one")
    shell, python = quick_start_blocks()
    # A fresh checkout after the README's install line: .venv here, nothing on PATH but the
    # system (so `ricordo` works only if the quick start puts it there).
    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH="/usr/bin:/bin", NO_COLOR="1", COLUMNS="100")

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "update 4 (er)" in done.stdout and "-> state/v4" in done.stdout, done.stdout
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "preds.npy").is_file()
    assert re.search(r"^v4 .* parent=state/v3$", done.stdout, re.M), done.stdout
    shell_states = digest(tmp_path / "state")

    (tmp_path / "quickstart.py").write_text(python, encoding="utf-8")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "quickstart.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "'accuracy':" in done.stdout, done.stdout
    for name in ("v0", "v1"):
        assert (tmp_path / "py-state" / name / "manifest.json").is_file()
    assert digest(tmp_path / "state") == shell_states  # the shell's states are untouched
