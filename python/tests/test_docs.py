"""The README's Python examples and python/examples run as tests; the stubs pass mypy --strict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HERE

ROOT = HERE.parent.parent
EXAMPLES = HERE.parent / "examples"


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_has_python_examples() -> None:
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example(index: int, tmp_path: Path) -> None:
    code = readme_blocks()[index]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_quickstart_example(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "42_s0 b'hello, pieces' 13" in out.stdout
    assert "missing: 43_s0 PIECE_NOT_FOUND" in out.stdout
    assert "deleted 4 pieces" in out.stdout


def test_stubs_pass_mypy_strict(tmp_path: Path) -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed (bash scripts/test.sh installs it)")
        pytest.skip("mypy not installed")

    def mypy_strict(name: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    shutil.copy(EXAMPLES / "quickstart.py", tmp_path / "quickstart.py")
    out = mypy_strict("quickstart.py")
    assert out.returncode == 0, out.stdout + out.stderr
    # and a wrong call is caught, so the check is not vacuous
    (tmp_path / "wrong.py").write_text(
        "import piecestore\n"
        "s = piecestore.PieceStore('memory://')\n"
        "s.put(1, 'text')\n"
        "n: str = s.get('k')\n"
    )
    out = mypy_strict("wrong.py")
    assert out.returncode == 1 and out.stdout.count("error:") >= 3, out.stdout
