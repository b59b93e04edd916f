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


def test_app_ref_parses_a_module_and_selector_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ref = AppRef.parse("shop.web.api::price", module=True)
    assert ref == AppRef(None, "price", module="shop.web.api", root=str(tmp_path))
    assert (ref.default_name, str(ref)) == ("api", "-m shop.web.api::price")
    assert AppRef.parse("shop", module=True).app_var is None


@pytest.mark.parametrize(
    ("text", "module", "message"),
    [
        ("shop/web/api.py", True, r"-m takes a module name.*-m shop\.web\.api"),
        ("shop.web-api", True, "not a Python module name"),
        ("shop.api::1x", True, "not a variable name"),
        ("shop.web.api", False, r"For a module, use -m shop\.web\.api"),
    ],
)
def test_app_ref_explains_a_file_module_mixup(text: str, module: bool, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        AppRef.parse(text, module=module)


def test_container_imports_a_nested_file_by_its_dotted_name(tmp_path: Path) -> None:
    """What a deployed `-m pkg.sub.mod` container does: relative imports resolve in the package."""
    import subprocess
    import sys

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "base.py").write_text("VALUE = 41\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "mod.py").write_text("from ..base import VALUE\nANSWER = VALUE + 1\n")
    script = (
        "import sys; from cove._container.entrypoint import import_user_module as i; "
        f"m = i({str(tmp_path / 'pkg' / 'sub' / 'mod.py')!r}, {str(tmp_path)!r}); "
        "print(m.__name__, m.ANSWER)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["pkg.sub.mod", "42"]


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


def _app(name: str, kind: str, state: str) -> dict[str, object]:
    return {"name": name, "kind": kind, "state": state}


def test_app_list_shows_one_row_per_name_preferring_running_then_deployed() -> None:
    from cove.cli.app import listed

    apps = [
        _app("shop", "ephemeral", "stopped"),  # an old `cove serve shop.py`
        _app("shop", "deployed", "deployed"),
        _app("old", "deployed", "stopped"),
        _app("old", "ephemeral", "stopped"),
        _app("dev", "deployed", "stopped"),
        _app("dev", "ephemeral", "ephemeral"),
        _app("both", "deployed", "deployed"),
        _app("both", "ephemeral", "ephemeral"),  # two live apps of one name: both shown
    ]
    assert [(a["name"], a["kind"]) for a in listed(apps)] == [
        ("shop", "deployed"),
        ("old", "deployed"),
        ("dev", "ephemeral"),
        ("both", "deployed"),
        ("both", "ephemeral"),
    ]


def test_build_error_drops_its_tail_once_the_whole_log_was_printed() -> None:
    from cove.cli._build import _without_tail

    message = (
        "Image build failed at step 2/2 (pip_install x) with exit code 1. Last lines of its output:\n"
        "  error: no x\nFull build log: /c/logs/k.log"
    )
    assert _without_tail(message) == (
        "Image build failed at step 2/2 (pip_install x) with exit code 1. Full build log: /c/logs/k.log"
    )
    assert _without_tail("Python 3.9 not found.") == "Python 3.9 not found."


def test_tables_keep_long_names_whole_in_a_narrow_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from cove.cli import _render

    name = "an-application-name-long-enough-to-be-cut-at-forty-columns"
    narrow = Console(width=40, file=None, soft_wrap=True, highlight=False)
    original = _render.out
    _render.out = narrow
    try:
        _render.table("Apps", ("Name", "State", "Created at"), [(name, "deployed", "2026-12-06 20:00:00")])
    finally:
        _render.out = original
    printed = capsys.readouterr().out
    assert name in printed and "…" not in printed
    assert narrow.width == 40
