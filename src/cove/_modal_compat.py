"""Make `import modal` give Cove: the same module objects, so `modal.App is cove.App`.

Cove's loader and container entrypoint call `install()` before importing user code written for
Modal. It is never called by `import cove`, so a plain Python process is left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

#: `modal.<x>` module names a user script may import, and the Cove module that answers each.
ALIASES: dict[str, str] = {
    "modal": "cove",
    "modal.app": "cove.app",
    "modal.cls": "cove.functions",
    "modal.dict": "cove.dict",
    "modal.exception": "cove.exception",
    "modal.experimental": "cove.experimental",
    "modal.functions": "cove.functions",
    "modal.image": "cove.image",
    "modal.partial_function": "cove.endpoints",
    "modal.queue": "cove.queue",
    "modal.secret": "cove.secret",
    "modal.server": "cove.server",
    "modal.volume": "cove.volume",
}


def _is_modal_name(name: str) -> bool:
    return name == "modal" or name.startswith("modal.")


class _AliasLoader(importlib.abc.Loader):
    """Loads a `modal.*` name by putting the Cove module into `sys.modules` under that name.

    The import system reads the module back from `sys.modules` after `exec_module`, so the name is
    bound to the Cove module itself, not to a copy.
    """

    def __init__(self, target: str) -> None:
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        sys.modules[module.__name__] = importlib.import_module(self._target)


class ModalAliasFinder(importlib.abc.MetaPathFinder):
    """Answers every `modal` import ahead of any installed `modal` package."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not _is_modal_name(fullname):
            return None
        alias = ALIASES.get(fullname)
        if alias is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: Cove provides {', '.join(sorted(ALIASES))}. "
                "Import the names you need from `modal` itself.",
                name=fullname,
            )
        return importlib.util.spec_from_loader(fullname, _AliasLoader(alias))


def install() -> None:
    """Route `modal` imports to Cove from now on. Idempotent; replaces a real `modal` already imported."""
    if not any(isinstance(finder, ModalAliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ModalAliasFinder())
    for name in [n for n in sys.modules if _is_modal_name(n)]:
        if name not in ALIASES:
            del sys.modules[name]  # part of a real modal package: must not mix with Cove's modules
    for alias, target in ALIASES.items():
        sys.modules[alias] = importlib.import_module(target)


__all__ = ["ALIASES", "ModalAliasFinder", "install"]
