"""`_modal_compat.install()` makes `import modal` give Cove's own modules.

Every test runs in a fresh interpreter so this test process keeps its import system untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_python(script: str, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def real_modal(tmp_path: Path) -> Path:
    """A stand-in for an installed `modal` package, to show Cove's aliases win."""
    package = tmp_path / "modal"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\n")
    (package / "sandbox.py").write_text("REAL_SANDBOX = True\n")
    (package / "exception.py").write_text("REAL_EXCEPTION = True\n")
    return tmp_path


USER_SCRIPT = """
import warnings
import modal
from modal import App, web_endpoint
import modal.exception

app = App("compat")

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")

    @app.function()
    @web_endpoint(method="POST")
    def square(item: dict):
        return {"square": item["x"] ** 2}

assert any(issubclass(w.category, DeprecationWarning) for w in caught)
assert square.local({"x": 3}) == {"square": 9}
assert app._manifest().functions[0].web.method == "POST"
"""


def test_modal_imports_resolve_to_the_very_same_cove_modules() -> None:
    result = run_python(
        """
        import sys
        from cove import _modal_compat
        _modal_compat.install()
        _modal_compat.install()  # idempotent

        import cove, cove.app, cove.exception, cove.functions, cove.image, cove.secret
        import modal, modal.app, modal.exception, modal.functions, modal.image, modal.secret
        import modal.dict, modal.queue, modal.volume
        from modal.functions import Function

        assert modal is cove and modal.App is cove.App
        assert modal.exception is cove.exception and modal.functions is cove.functions
        assert modal.app is cove.app and modal.image is cove.image and modal.secret is cove.secret
        assert modal.Dict is modal.dict.Dict and modal.Queue is modal.queue.Queue
        assert modal.volume.Volume is cove.Volume
        assert Function is cove.Function
        assert sum(type(f).__name__ == "ModalAliasFinder" for f in sys.meta_path) == 1
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_modal_script_runs_unchanged(real_modal: Path) -> None:
    result = run_python(
        "from cove import _modal_compat\n_modal_compat.install()\n" + USER_SCRIPT + "print('ok')\n",
        pythonpath=real_modal,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cove_wins_over_an_already_imported_real_modal(real_modal: Path) -> None:
    result = run_python(
        """
        import sys
        import modal, modal.sandbox
        assert modal.REAL

        from cove import _modal_compat
        _modal_compat.install()

        import cove
        import modal
        assert modal is cove
        assert "modal.sandbox" not in sys.modules, "parts of the real package are dropped"

        del sys.modules["modal.exception"]
        import modal.exception  # re-imported through the finder, not from the real package
        assert modal.exception is cove.exception
        print("ok")
        """,
        pythonpath=real_modal,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_unsupported_modal_submodules_fail_with_a_message_naming_what_exists(real_modal: Path) -> None:
    result = run_python(
        """
        from cove import _modal_compat
        _modal_compat.install()
        import modal.sandbox
        """,
        pythonpath=real_modal,
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError: No module named 'modal.sandbox': Cove provides" in result.stderr


def test_without_install_modal_is_not_cove(real_modal: Path) -> None:
    result = run_python(
        "import cove, modal\nassert modal is not cove and modal.REAL\n", pythonpath=real_modal
    )
    assert result.returncode == 0, result.stderr
