"""Image builds from the CLI: ask the server to build an app's images and show their progress."""

from __future__ import annotations

from typing import Any

from cove import exception
from cove._error_body import error_class
from cove.cli import _render as render
from cove.cli._client import ControlClient
from cove.config import force_build


def build_images(client: ControlClient, spec_json: dict[str, Any], bundle_id: str | None = None) -> None:
    """Build the images of `spec_json` (cached ones return at once), showing one line per step;
    on a failure the whole build output is printed before the error is raised. With `bundle_id`,
    the local files the steps name are read from that uploaded bundle (a deploy's manifest).

    Raises the server's Cove error (e.g. `ImageBuildError` naming the failed step, its exit code
    and its last lines). A remote server (COVE_SERVER_URL) builds during the deploy instead.
    """
    if client.remote_url:
        return
    body: dict[str, Any] = {"spec": spec_json, "force": force_build()}
    if bundle_id is not None:
        body["bundle_id"] = bundle_id
    display = render.BuildDisplay()
    try:
        for event in client.stream_lines("POST", "/v1/images/build", json=body):
            if event.get("event") == "error":
                message = str(event.get("message", "image build failed"))
                if display.failed():
                    message = _without_tail(message)
                raise error_class(str(event.get("error")), exception.ImageBuildError)(message)
            if event.get("event") == "done":
                return
            display.event(event)
    finally:
        display.close()
    raise exception.ConnectionError("The server ended the image build stream early; see its log.")


def _without_tail(message: str) -> str:
    """The server's build error without its last lines of output, once the whole log was printed."""
    head, found, rest = message.partition(" Last lines of its output:")
    if not found:
        return message
    last = rest.rstrip().rpartition("\n")[2]
    return f"{head} {last}" if last.startswith("Full build log:") else head
