"""`cove serve -m` / `cove deploy -m`: a multi-file package written for Modal, with relative imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

API = """
import modal

from ..prices import price_of
from . import labels

app = modal.App("modshop")


@app.function()
@modal.fastapi_endpoint()
def price(item: str = "tea"):
    return {"item": labels.label(item), "price": price_of(item)}
"""


def _write_package(root: Path, tea_price: int) -> None:
    """shop/{__init__,prices}.py and shop/web/{__init__,api,labels}.py: the app is shop.web.api."""
    (root / "shop" / "web").mkdir(parents=True, exist_ok=True)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "prices.py").write_text(
        f"PRICES = {{'tea': {tea_price}}}\n\n\ndef price_of(item):\n    return PRICES.get(item, 0)\n"
    )
    (root / "shop" / "web" / "__init__.py").write_text("")
    (root / "shop" / "web" / "labels.py").write_text("def label(item):\n    return item.upper()\n")
    (root / "shop" / "web" / "api.py").write_text(API)
    (root / "unrelated.txt").write_text("not part of the package\n")


def _wait_for_price(url: str, expected: int) -> None:
    import time

    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        response = host_request("GET", url + "/?item=tea")
        last = (response.status_code, response.text)
        if response.status_code == 200 and response.json() == {"item": "TEA", "price": expected}:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered price {expected}; last answer {last!r}")


def test_serve_and_deploy_a_package_with_relative_imports(
    tmp_path: Path, cove_env: CoveEnv, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cove serve -m shop.web.api` imports the module as part of its package (relative imports work),
    watches the package directory and reloads on an edit of a sibling module; `cove deploy -m
    shop.web.api::price` (a function selector) ships the package and serves it from the bundle."""
    _write_package(tmp_path, 3)
    monkeypatch.chdir(tmp_path)  # -m imports from the current directory, as `python -m` does

    proc = serve("-m", "shop.web.api")
    (url,) = proc.urls(1)
    assert url.startswith("http://test--modshop-price-dev.localhost:")
    proc.wait_for(rf"Watching {tmp_path / 'shop'}\.")
    _wait_for_price(url, 3)
    (tmp_path / "shop" / "prices.py").write_text(
        (tmp_path / "shop" / "prices.py").read_text().replace("'tea': 3", "'tea': 4")
    )
    _wait_for_price(url, 4)
    proc.wait_for(r"App updated to v2 .*\(prices\.py\)")

    result = cove_env.run("deploy", "-m", "shop.web.api::price")
    (deployed,) = URL_RE.findall(result.stdout)
    assert deployed.startswith("http://test--modshop-price.localhost:")
    # The version runs from its bundle: the package is in it, the rest of the directory is not.
    for path in (tmp_path / "shop").rglob("*.py"):
        path.write_text("this is no longer python (")
    assert host_request("GET", deployed + "/?item=tea").json() == {"item": "TEA", "price": 4}
    bundles = list((cove_env.home / "bundles").glob("*/src"))
    assert [sorted(p.name for p in b.iterdir()) for b in bundles] == [["shop"]]


def test_module_reference_errors_say_what_to_pass(
    tmp_path: Path, cove_env: CoveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing module, a file path given to -m and a module given without -m are each explained."""
    monkeypatch.chdir(tmp_path)
    missing = cove_env.run("deploy", "-m", "nowhere.app", check=False)
    assert missing.returncode == 1
    assert "No module named 'nowhere'" in missing.stderr
    assert "directory that contains the package 'nowhere'" in missing.stderr
    path = cove_env.run("deploy", "-m", "shop/web/api.py", check=False)
    assert path.returncode == 2 and "-m shop.web.api" in path.stderr
    dotted = cove_env.run("serve", "shop.web.api", check=False)
    assert dotted.returncode == 2 and "use -m shop.web.api" in dotted.stderr


JOB = """
import modal

from ..prices import price_of

app = modal.App("modjob")


@app.function()
def total(items: str) -> int:
    return sum(price_of(item) for item in items.split(","))


@app.local_entrypoint()
def main(items: str = "tea"):
    print("total:", total.remote(items))
"""


def test_run_a_module_of_a_package(
    tmp_path: Path, cove_env: CoveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cove run -m shop.web.job --items ...`: the entrypoint runs here, and the function it calls runs
    in a container that imports the module within its package (its relative import works there too)."""
    _write_package(tmp_path, 3)
    (tmp_path / "shop" / "web" / "job.py").write_text(JOB)
    monkeypatch.chdir(tmp_path)
    result = cove_env.run("run", "-m", "shop.web.job", "--items", "tea,tea,coffee")
    assert "total: 6" in result.stdout
    assert "App completed." in result.stdout + result.stderr
