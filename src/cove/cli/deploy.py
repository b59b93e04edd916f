"""`cove deploy`: a persistent, versioned app."""

from __future__ import annotations

import os
import re
import time

import click

from cove import exception
from cove._bundle import make_bundle, relocate
from cove._spec import spec_to_dict
from cove.cli import _render as render
from cove.cli._build import build_images
from cove.cli._client import ControlClient, ensure_server
from cove.cli._load import LoadError, WarmLoader, app_ref_arguments, parse_app_ref
from cove.config import Settings

_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,50}$")
NO_NAME = (
    "You need to either supply an explicit deployment name on the command line or have a name set on "
    'the App. Use `cove deploy {file} --name my-app`, or `app = cove.App("my-app")` in the file.'
)


@click.command()
@app_ref_arguments
@click.option("--name", help="Deployment name (default: the App's name).")
@click.option("--tag", default="", help="A label recorded with this version (<= 50 of [A-Za-z0-9._-]).")
def deploy(app_ref: str, use_module: bool, name: str | None, tag: str) -> None:
    """Deploy the app in FILE (or, with -m, in MODULE): a new version that keeps serving after this
    command and server restarts. With -m, the module's top-level package is shipped."""
    ref = parse_app_ref(app_ref, use_module)
    if tag and not _TAG_RE.match(tag):
        raise click.BadParameter(f"{tag!r}: use at most 50 of [A-Za-z0-9._-]", param_hint="--tag")
    started = time.monotonic()
    loader = WarmLoader()
    try:
        loader.prepare()
        client = ensure_server(
            Settings.from_env(), on_start=lambda: render.info("Starting the Cove server in the background...")
        )
        try:
            loaded = loader.load(ref)
        except LoadError as exc:
            render.user_error(exc.text)
            raise SystemExit(1) from None
        app_name = name or loaded.spec.name
        if not app_name:
            where = f"-m {ref.module}" if ref.file is None else os.path.relpath(ref.file)
            render.error(NO_NAME.format(file=where))
            raise SystemExit(1)
        render.success(f"Loaded app {app_name} ({len(loaded.spec.functions)} functions).")
        # The server reads the files image steps name from the bundle only, at these paths.
        bundle = make_bundle(
            loaded.spec, loaded.module_file, source_dir=loaded.source_dir, package_dir=loaded.package_dir
        )
        spec_json = spec_to_dict(relocate(loaded.spec))
        bundle_id = client.request("POST", "/v1/bundles", content=bundle)["bundle_id"]
        render.success(f"Uploaded sources ({_size(len(bundle))}, bundle {bundle_id[:12]}).")
        build_images(client, spec_json, bundle_id)
        before = _live_version(client, app_name)
        render.info("Deploying: new containers warm up before traffic moves to them...")
        try:
            app = client.request(
                "PUT",
                f"/v1/apps/deployed/{app_name}",
                json={
                    "spec": spec_json,
                    "bundle_id": bundle_id,
                    "module_path": os.path.relpath(loaded.module_file, loaded.source_dir),
                    "tag": tag,
                },
            )
        except exception.ConnectionError:
            render.error(_connection_lost(client, app_name, before))
            raise SystemExit(1) from None
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    finally:
        loader.close()
    render.created_objects(app)
    render.success(f"App deployed in {time.monotonic() - started:.2f}s! 🎉 (version v{app['version']})")
    render.info(f"View at {client.health()['dashboard_url']}")


def _live_version(client: ControlClient, app_name: str) -> int:
    """The version of deployed app `app_name` serving now (0: none)."""
    try:
        app = client.request("GET", f"/v1/apps/{app_name}", params={"kind": "deployed"})
    except exception.NotFoundError:
        return 0
    return int(app["version"]) if app.get("state") != "stopped" else 0


def _connection_lost(client: ControlClient, app_name: str, before: int) -> str:
    """What to tell the user when the server went away during the deploy's switch: the server moves
    traffic and records the version in one step, so either `before` or the new version is live.
    A local server is started again (as every command does) to say which."""
    was = f"v{before}" if before else "no version"
    lost = "Lost the connection to the Cove server during the deploy"
    if client.remote_url:
        return (
            f"{lost} ({client.remote_url}). A deploy switches versions all-or-nothing: {was} of "
            f"{app_name} stays live unless the new one had gone live; once the server is back, "
            f"`cove app history {app_name}` shows which."
        )
    render.warning(f"{lost}; starting it again to see which version is live...")
    try:
        now = _live_version(ensure_server(Settings.from_env()), app_name)
    except exception.Error as exc:
        return f"{lost}, and it does not start again: {exc}"
    if now > before:
        return f"{lost}, after the new version went live: v{now} of {app_name} is live now."
    live = f"v{now} of {app_name} is live" if now else f"{app_name} has no live version"
    return f"{lost}, before the new version went live: {live} now. Run `cove deploy` again."


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.1f} GiB"
