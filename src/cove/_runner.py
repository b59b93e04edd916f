"""Running an app from the user's own process: `app.run()` (and `cove run`), and `app.deploy()`.

`app.run()` is Modal's ephemeral app: the server gets the app's manifest and runs its functions (and
web endpoints, with `-dev` URLs) in containers while the block runs; its functions' `.remote()`
reach them; container logs stream to the terminal; the app stops when the block ends, or on Ctrl-C.
The source is the user's file where it is (as `cove serve` mounts it), not a bundle.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cove import exception

if TYPE_CHECKING:
    from cove.app import App
    from cove.cli._client import ControlClient


def module_file(app: App) -> str:
    """The file that defines `app`'s functions (containers import it by path, as `cove serve` does)."""
    from cove.functions import Cls

    raws: list[Any] = [
        obj._user_cls if isinstance(obj, Cls) else obj._raw_f for obj in app._registry.values()
    ]
    raws += [entrypoint.raw_f for entrypoint in app._local_entrypoints.values()]
    for raw in raws:
        module = sys.modules.get(getattr(raw, "__module__", ""))
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            return os.path.abspath(path)
    raise exception.InvalidError(
        f"{app!r} has no function defined in a Python file, so there is nothing to run. "
        "Decorate a function with @app.function() in a .py file."
    )


def source_root(path: str, module_name: str) -> tuple[str, str | None]:
    """Where the module at `path` was imported from: (the sys.path entry, the top-level package's
    directory or None). A module of a package (`cove run -m pkg.mod`) ships its whole package."""
    parts = module_name.split(".")
    depth = len(parts) if os.path.basename(path) == "__init__.py" else len(parts) - 1
    root = os.path.dirname(path)
    for _ in range(depth):
        root = os.path.dirname(root)
    return root, (os.path.join(root, parts[0]) if depth > 0 else None)


def _module_name(path: str) -> str:
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and os.path.abspath(str(module.__file__)) == path:
            return module.__name__
    return os.path.splitext(os.path.basename(path))[0]


def _client() -> ControlClient:
    from cove.cli import _render as render
    from cove.cli._client import ensure_server
    from cove.config import Settings

    return ensure_server(
        Settings.from_env(), on_start=lambda: render.info("Starting the Cove server in the background...")
    )


class EphemeralRun:
    """One ephemeral app published from this process; `stop()` ends it (its URLs answer 404)."""

    def __init__(self, client: ControlClient, name: str) -> None:
        self.client = client
        self.name = name
        self.session = uuid.uuid4().hex
        self.started_at = time.time()
        self._stopped = threading.Event()
        self._logs: threading.Thread | None = None

    def publish(self, spec_json: dict[str, Any], module_file: str, source_dir: str) -> dict[str, Any]:
        from cove.cli._build import build_images

        build_images(self.client, spec_json)
        body = {
            "spec": spec_json,
            "source": {"module_file": module_file, "source_dir": source_dir},
            "session": self.session,
        }
        result: dict[str, Any] = self.client.request("PUT", f"/v1/apps/ephemeral/{self.name}", json=body)
        return result

    def follow_logs(self) -> None:
        """Print the app's container logs in a thread until the app stops."""
        self._logs = threading.Thread(target=self._follow, name="cove-run-logs", daemon=True)
        self._logs.start()

    def _follow(self) -> None:
        from cove.cli import _render as render

        with contextlib.suppress(exception.Error, OSError):
            for message in self.client.stream_lines(
                "GET",
                f"/v1/apps/{self.name}/attach",
                params={"session": self.session, "since": repr(self.started_at)},
            ):
                if "log" in message:
                    render.log_record(message["log"])
                elif "event" in message:
                    return

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with contextlib.suppress(exception.Error):
            self.client.request("POST", f"/v1/apps/{self.name}/stop", params={"kind": "ephemeral"})
        if self._logs is not None:
            self._logs.join(timeout=5)  # the log stream ends with the app: print what came before


@contextlib.contextmanager
def run(app: App, *, name: str | None = None, show_objects: bool = True) -> Iterator[EphemeralRun]:
    """Run `app` as an ephemeral app while the block runs (see the module docstring)."""
    from cove._spec import spec_to_dict
    from cove.cli import _render as render
    from cove.functions import is_local

    if not is_local():
        raise exception.InvalidError(
            "app.run() starts an app from your machine; inside a container its app already runs: "
            "call the functions' .remote() directly."
        )
    if app._running is not None:
        raise exception.InvalidError(f"{app!r} is already running; app.run() cannot be nested.")
    path = module_file(app)
    app_name = name or app.name or os.path.splitext(os.path.basename(path))[0]
    client = _client()
    session = EphemeralRun(client, app_name)
    started = time.monotonic()
    try:
        source_dir, _ = source_root(path, _module_name(path))
        published = session.publish(spec_to_dict(app._manifest()), path, source_dir)
        if show_objects:
            render.success(f"Initialized. View run at {client.health()['dashboard_url']}")
            render.created_objects(published)
            render.info(f"App {app_name} is running ({time.monotonic() - started:.2f}s).")
        session.follow_logs()
        app._running = (app_name, "ephemeral")
        yield session
    finally:
        app._running = None
        session.stop()
        client.close()


def deploy(app: App, *, name: str | None = None, tag: str = "") -> dict[str, Any]:
    """Deploy `app` from this process, as `cove deploy` does; returns the server's answer."""
    from cove._bundle import make_bundle, relocate
    from cove._spec import spec_to_dict
    from cove.cli._build import build_images

    app_name = name or app.name
    if not app_name:
        raise exception.InvalidError(
            "You need to either supply an explicit deployment name or have a name set on the App: "
            'app.deploy(name="my-app"), or app = cove.App("my-app").'
        )
    path = module_file(app)
    spec = app._manifest()
    spec_json = spec_to_dict(relocate(spec))  # the server reads image steps' files from the bundle only
    client = _client()
    try:
        source_dir, package_dir = source_root(path, _module_name(path))
        bundle = make_bundle(spec, path, source_dir=source_dir, package_dir=package_dir)
        bundle_id = client.request("POST", "/v1/bundles", content=bundle)["bundle_id"]
        build_images(client, spec_json, bundle_id)
        body = {
            "spec": spec_json,
            "bundle_id": bundle_id,
            "module_path": os.path.relpath(path, source_dir),
            "tag": tag,
        }
        result: dict[str, Any] = client.request("PUT", f"/v1/apps/deployed/{app_name}", json=body)
        return result
    finally:
        client.close()


__all__ = ["EphemeralRun", "deploy", "module_file", "run"]
