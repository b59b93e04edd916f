"""`cove serve`: an ephemeral app with live reload, stopped on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from types import FrameType
from typing import Any

import click
import watchfiles

from cove import exception
from cove.cli import _render as render
from cove.cli._build import build_images
from cove.cli._client import ControlClient, ensure_server
from cove.cli._load import AppRef, Loaded, LoadError, WarmLoader, app_ref_arguments, parse_app_ref
from cove.config import Settings, env


class SourceFilter(watchfiles.DefaultFilter):
    """watchfiles' default filter (.git, __pycache__, *.pyc, *.swp, ~, .#*) plus more editor temp files
    and virtualenvs, so saving a file reloads once and nothing reloads on its own."""

    ignore_dirs = (*watchfiles.DefaultFilter.ignore_dirs, ".venv", "venv", ".tox", ".nox", ".cove")
    ignore_entity_patterns = (
        *watchfiles.DefaultFilter.ignore_entity_patterns,
        r"^4913$",  # vim probes whether it may write the directory with this file
        r"\.tmp$",
        r"\.swo$",
        r"^#.*#$",  # emacs auto-save
        r"\.kate-swp$",
        r"\.log$",
    )


class _Session:
    """One `cove serve` run: the app it owns on the server and how it ended."""

    def __init__(self, client: ControlClient, name: str, session: str) -> None:
        self.client = client
        self.name = name
        self.session = session
        self.stop_event = threading.Event()
        self.ended_by: str | None = None  # "taken_over" | "stopped" | "timeout" | None
        self.started_at = time.time()  # logs from here on are shown, even those before `follow` starts

    def publish(self, loaded: Loaded) -> dict[str, Any]:
        build_images(self.client, loaded.spec_json)
        body = {
            "spec": loaded.spec_json,
            "source": {"module_file": loaded.module_file, "source_dir": loaded.source_dir},
            "session": self.session,
        }
        result: dict[str, Any] = self.client.request("PUT", f"/v1/apps/ephemeral/{self.name}", json=body)
        return result

    def follow(self) -> None:
        """Print the app's logs until the server ends the stream (stop or takeover)."""
        try:
            for message in self.client.stream_lines(
                "GET",
                f"/v1/apps/{self.name}/attach",
                params={"session": self.session, "since": repr(self.started_at)},
            ):
                if "log" in message:
                    render.log_record(message["log"])
                elif "event" in message:
                    self.ended_by = message["event"]
                    break
        except exception.Error as exc:
            if not self.stop_event.is_set():
                render.error(str(exc))
                self.ended_by = "stopped"
        finally:
            self.stop_event.set()

    def time_out(self) -> None:
        self.ended_by = "timeout"
        self.stop_event.set()

    def stop(self) -> None:
        with contextlib.suppress(exception.Error):
            self.client.request("POST", f"/v1/apps/{self.name}/stop", params={"kind": "ephemeral"})


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@app_ref_arguments
@click.option("-n", "--name", help="Name of the ephemeral app (default: App(name) or the file name).")
@click.option(
    "--timeout",
    type=float,
    default=lambda: float(env("COVE_SERVE_TIMEOUT") or 0) or None,
    help="Stop serving after this many seconds (default: until Ctrl-C).",
)
def serve(app_ref: str, use_module: bool, name: str | None, timeout: float | None) -> None:
    """Serve the web endpoints of FILE (or, with -m, of MODULE) as an ephemeral app that reloads
    when its files change (with -m, the files of its package)."""
    ref = parse_app_ref(app_ref, use_module)
    settings = Settings.from_env()
    loader = WarmLoader()
    loader.prepare()  # imports start while the server comes up
    signal.signal(signal.SIGTERM, _raise_interrupt)
    session: _Session | None = None
    try:
        client = ensure_server(
            settings, on_start=lambda: render.info("Starting the Cove server in the background...")
        )
        try:
            loaded = loader.load(ref)
        except LoadError as exc:
            render.user_error(exc.text)
            raise SystemExit(1) from None
        app_name = name or loaded.spec.name or ref.default_name
        session = _Session(client, app_name, uuid.uuid4().hex)
        started = time.monotonic()
        app = session.publish(loaded)
        render.success(f"Initialized app {app_name} ({time.monotonic() - started:.2f}s).")
        render.created_objects(app)
        render.info(f"View at {client.health()['dashboard_url']}")
        render.serving(loaded.watch_dir)
        threading.Thread(target=session.follow, name="cove-serve-logs", daemon=True).start()
        if timeout:
            timer = threading.Timer(timeout, session.time_out)
            timer.daemon = True
            timer.start()
        _watch(session, loader, ref, loaded.watch_dir, mounted_paths(loaded.spec_json, loaded.watch_dir))
    except KeyboardInterrupt:
        pass
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    finally:
        loader.close()
    if session is None:
        return
    if session.ended_by == "taken_over":
        render.warning(f"Another `cove serve` took over app {session.name}; this one stops watching.")
        return
    if session.ended_by == "stopped":
        render.info(f"App {session.name} was stopped.")
        return
    render.info("Stopping app... (its URLs will answer 404)")
    session.stop()
    render.success("App stopped.")


def mounted_paths(spec: dict[str, Any], directory: str) -> list[str]:
    """Local paths the app's images mount or copy (add_local_*) that live outside `directory`:
    `cove serve` watches them too, so editing a mounted file reloads the app."""
    found: set[str] = set()
    for fn in spec.get("functions", ()):
        for step in (fn.get("image") or {}).get("steps", ()):
            args = dict(step.get("args", ()))
            if step.get("kind") in ("add_local_file", "add_local_dir"):
                found.add(str(args.get("local_path")))
            elif step.get("kind") == "add_local_python_source":
                found.update(str(p) for p in args.get("paths", ()) if p)
    inside = os.path.join(os.path.abspath(directory), "")
    return sorted(p for p in found if os.path.exists(p) and not os.path.join(p, "").startswith(inside))


def _watch(session: _Session, loader: WarmLoader, ref: AppRef, directory: str, extra: list[str]) -> None:
    # step=30 ms: changes are reported once the directory has been quiet that long.
    for changes in watchfiles.watch(
        directory,
        *extra,
        watch_filter=SourceFilter(),
        stop_event=session.stop_event,
        step=30,
        debounce=1600,
        raise_interrupt=True,
    ):
        if session.stop_event.is_set():
            return
        started = time.monotonic()
        names = sorted({os.path.relpath(path, directory) for _, path in changes})
        try:
            loaded = loader.load(ref)
        except LoadError as exc:
            render.user_error(exc.text)
            render.warning("Reload failed; the last good version keeps serving.")
            continue
        try:
            app = session.publish(loaded)
        except exception.Error as exc:
            render.error(str(exc))
            render.warning("Reload failed; the last good version keeps serving.")
            continue
        render.success(
            f"App updated to v{app['version']} in {time.monotonic() - started:.2f}s "
            f"({', '.join(names[:3])}{'...' if len(names) > 3 else ''})."
        )
