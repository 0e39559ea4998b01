"""The READMEs' Python examples and python/examples run as tests; the stubs pass mypy --strict;
``help(piecestore.PieceStore)`` documents every constructor option."""

from __future__ import annotations

import os
import pydoc
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import piecestore
from conftest import HERE, S3_KEYS

ROOT = HERE.parent.parent
EXAMPLES = HERE.parent / "examples"


def readme_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    text = readme.read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


PY_README = ROOT / "python" / "README.md"


def test_readme_has_python_examples() -> None:
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example(index: int, tmp_path: Path) -> None:
    code = readme_blocks()[index]
    server = None
    if "http://127.0.0.1:9820" in code:
        # The `piecestore serve` example: against a server started as the README starts it,
        # with its keys, on a free port.
        from test_serve import start, stop

        server = start(tmp_path / "served", keys=("pieces-admin", "change-me-please"))
        code = code.replace("http://127.0.0.1:9820", server.endpoint)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    finally:
        if server is not None:
            stop(server)
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


def test_python_readme_has_examples() -> None:
    blocks = readme_blocks(PY_README)
    assert len(blocks) >= 5
    assert any("s3://" in b for b in blocks) and any("multiprocessing" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(readme_blocks(PY_README))))
def test_python_readme_example(index: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code = readme_blocks(PY_README)[index]
    env = dict(os.environ)
    if "s3://" in code:
        # The S3 examples run against the test server: s3:// URLs go to AWS_ENDPOINT_URL.
        env.update(
            AWS_ENDPOINT_URL=request.getfixturevalue("s3_endpoint"),
            AWS_ACCESS_KEY_ID=S3_KEYS["access_key"],
            AWS_SECRET_ACCESS_KEY=S3_KEYS["secret_key"],
        )
    # A bucket store keeps its pack index in the cache directory: not the user's.
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # Run from a file, not -c: multiprocessing's spawn re-imports the main module by its path.
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def config_doc_option_names() -> list[str]:
    """The option names docs/config.md lists under "Options by name"."""
    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## Options by name", 1)[1].split("\n## ", 1)[0]
    listed = section.split("The names:", 1)[1].split(".\n", 1)[0]
    return re.findall(r"`([A-Za-z]+)`", listed)


def test_config_doc_lists_every_option() -> None:
    names = config_doc_option_names()
    assert len(names) >= 30, names
    assert sorted(names) == sorted(piecestore.OPTION_NAMES)


def test_documented_option_types_match_the_core_kinds() -> None:
    from piecestore._options import OPTION_DOCS

    # What help(PieceStore) says an option takes agrees with the core's table.
    documented = {
        "bool": {"bool"},
        "number": {"int", "float"},
        "duration": {"duration"},
        "size": {"size"},
        "text": {"str", "str, secret", "str or path"},
        "choice": {"str"},
        "conditional-writes": {"str or bool"},
    }
    assert sorted(piecestore.OPTION_KINDS) == sorted(piecestore.OPTION_NAMES)
    for name, kind in piecestore.OPTION_KINDS.items():
        assert OPTION_DOCS[name][0] in documented[kind], (name, kind, OPTION_DOCS[name][0])


def test_help_documents_every_constructor_option() -> None:
    from piecestore._options import OPTION_DOCS, snake_case

    # Every option has a meaning of its own (not the fallback), in the core's order.
    assert list(OPTION_DOCS) == list(piecestore.OPTION_NAMES)
    doc = pydoc.render_doc(piecestore.PieceStore, renderer=pydoc.plaintext)
    assert "PieceStore(store, /, **options)" in doc
    for name in config_doc_option_names():
        assert re.search(rf"\b{name}\b", doc), f"help(PieceStore) omits {name}"
        assert f"{snake_case(name)} ({name})" in doc, f"help(PieceStore) omits {name}"
    for name, snake in [
        ("MaxRetries", "max_retries"),
        ("TLSInsecureSkipVerify", "tls_insecure_skip_verify"),
        ("IAMType", "iam_type"),
        ("BucketURL", "bucket_url"),
        ("IndexUrl", "index_url"),
    ]:
        assert snake_case(name) == snake
    # The documented snake_case names are the ones the constructor takes.
    with piecestore.PieceStore("memory://", max_retries=2, gc_interval=None) as store:
        store.put("1_s0", b"x")
