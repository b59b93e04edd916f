"""The app the dashboard tests deploy, and helpers to reach the dashboard of a `CoveEnv` server."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.conftest import CoveEnv, host_request

DASH_APP = """
import cove

app = cove.App("dash")


@app.function(scaledown_window=300)
@cove.fastapi_endpoint()
def hello(name: str = "world"):
    print("hello-log", name, flush=True)
    return {"hello": name}
"""

VIEW_RE = re.compile(r"View at (http://dashboard\.localhost:\d+)")
URL_RE = re.compile(r"(http://test--dash-hello\.localhost:\d+)")


def deploy_dash(cove: CoveEnv, tmp_path: Path) -> tuple[str, str]:
    """Deploy the test app; its URL and the dashboard's, as `cove deploy` printed them."""
    source = tmp_path / "dash.py"
    source.write_text(DASH_APP)
    out = cove.run("deploy", str(source)).stdout
    url, view = URL_RE.search(out), VIEW_RE.search(out)
    assert url is not None and view is not None, out
    return url.group(1), view.group(1)


def csrf_token(dashboard: str, path: str = "/apps/deployed/dash") -> str:
    page = host_request("GET", dashboard + path)
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)
