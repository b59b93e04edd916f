"""An app in Modal's style whose endpoints call the app's other functions from inside their containers.

Used by tests/integration/test_calls_in_app.py under `cove serve` and `cove deploy`.
"""

import os
import time

import modal

app = modal.App("calls")


@app.function()
def square(x: int) -> dict:
    return {"value": x * x, "container": os.environ["MODAL_TASK_ID"]}


@app.function()
def add(a: int, b: int) -> int:
    return a + b


@app.function()
def count(n: int):
    for i in range(n):
        yield {"i": i, "container": os.environ["MODAL_TASK_ID"]}


@app.function()
def endless():
    """Never ends: a caller gets its first item only if items are streamed, not collected."""
    yield "first"
    while True:
        time.sleep(0.05)
        yield "more"


@app.cls()
class Counter:
    start: int = modal.parameter(default=0)

    @modal.method()
    def bump(self, by: int) -> int:
        return self.start + by


@app.function()
@modal.fastapi_endpoint()
def fanout(x: int = 3) -> dict:
    call = square.spawn(x)
    stream = endless.remote_gen()
    first = next(stream)
    stream.close()
    try:
        count.remote(1)
        remote_on_generator = "no error"
    except modal.exception.InvalidError as exc:
        remote_on_generator = str(exc)
    return {
        "remote": square.remote(x)["value"],
        "map": [r["value"] for r in square.map(range(x))],
        "starmap": list(add.starmap([(1, 2), (3, 4)])),
        "spawn": call.get()["value"],
        "gen": [item["i"] for item in count.remote_gen(x)],
        "streamed": first,
        "cls": Counter(start=10).bump.remote(5),
        "local": square.local(x)["value"],
        "remote_on_generator": remote_on_generator,
        "caller": os.environ["MODAL_TASK_ID"],
        "callee": square.remote(x)["container"],
    }


@app.function()
@modal.fastapi_endpoint()
async def fanout_async(x: int = 3) -> dict:
    by_name = modal.Function.from_name("calls", "count")
    return {
        "remote_aio": (await square.remote.aio(x))["value"],
        "gen_aio": [item["i"] async for item in count.remote_gen.aio(x)],
        "map_aio": [r["value"] async for r in square.map.aio([1, 2])],
        "from_name_gen": [item["i"] for item in by_name.remote_gen(2)] if app_kind() == "deployed" else None,
    }


def app_kind() -> str:
    return os.environ.get("COVE_APP_KIND", "")


@app.function()
@modal.fastapi_endpoint()
def probe() -> dict:
    """What the app's scoped control socket answers to routes a container must not use."""
    import httpx

    path = os.environ["COVE_CONTAINER_API"]
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://cove") as client:
        return {
            "path": path,
            "beside_it": sorted(os.listdir(os.path.dirname(path))),
            "tokens": client.post("/v1/tokens", json={"kind": "api"}).status_code,
            "secrets": client.get("/v1/secrets").status_code,
            "deploy": client.put("/v1/apps/deployed/evil", json={}).status_code,
            "stop_server": client.post("/v1/server/stop").status_code,
            "logs": client.get("/v1/apps/calls/logs").status_code,
            "dotdot": client.get("/v1/dicts/../secrets").status_code,
            "other_ephemeral": client.post(
                "/v1/calls", params={"app": "other", "function": "square", "kind": "ephemeral"}
            ).status_code,
            "message": client.get("/v1/secrets").json()["message"],
        }
