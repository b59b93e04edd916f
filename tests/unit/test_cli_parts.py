"""Pure parts of the CLI: app references and the file-watch filter."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchfiles import Change

from cove.cli._load import AppRef
from cove.cli.serve import SourceFilter
from cove.exception import InvalidError


def test_app_ref_parses_file_and_variable(tmp_path: Path) -> None:
    app_file = tmp_path / "shop.py"
    app_file.write_text("")
    assert AppRef.parse(str(app_file)) == AppRef(str(app_file), None)
    assert AppRef.parse(f"{app_file}::other") == AppRef(str(app_file), "other")


def test_app_ref_rejects_missing_and_non_python_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidError, match="File not found"):
        AppRef.parse(str(tmp_path / "nope.py"))
    with pytest.raises(InvalidError, match="not a Python file"):
        AppRef.parse(str(tmp_path / "notes.txt"))
    (tmp_path / "a.py").write_text("")
    with pytest.raises(InvalidError, match="not a variable name"):
        AppRef.parse(f"{tmp_path / 'a.py'}::1x")


@pytest.mark.parametrize(
    ("path", "watched"),
    [
        ("/src/app.py", True),
        ("/src/pkg/helpers.py", True),
        ("/src/.git/index", False),
        ("/src/__pycache__/app.cpython-311.pyc", False),
        ("/src/.app.py.swp", False),
        ("/src/app.py~", False),
        ("/src/4913", False),
        ("/src/.#app.py", False),
        ("/src/#app.py#", False),
        ("/src/.venv/lib/x.py", False),
        ("/src/server.log", False),
    ],
)
def test_source_filter_ignores_editor_and_tool_files(path: str, watched: bool) -> None:
    assert SourceFilter()(Change.modified, path) is watched


def test_the_cli_does_not_import_the_server_stack() -> None:
    """`cove --help` and client commands load no server modules (each would cost every command)."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom cove.cli import main\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    server_stack = {"uvicorn", "starlette", "jinja2", "httptools", "fastapi", "uvloop"}
    assert server_stack & set(loaded.stdout.split()) == set()
