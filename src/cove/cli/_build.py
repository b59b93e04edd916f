"""Image builds from the CLI: ask the server to build an app's images and show their progress."""

from __future__ import annotations

from typing import Any

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ControlClient
from cove.config import force_build


def build_images(client: ControlClient, spec_json: dict[str, Any], bundle_id: str | None = None) -> None:
    """Build the images of `spec_json` (cached ones return at once), streaming build output.

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
                cls = getattr(exception, str(event.get("error")), None)
                if not (isinstance(cls, type) and issubclass(cls, exception.Error)):
                    cls = exception.ImageBuildError
                raise cls(str(event.get("message", "image build failed")))
            if event.get("event") == "done":
                return
            display.event(event)
    finally:
        display.close()
    raise exception.ConnectionError("The server ended the image build stream early; see its log.")
