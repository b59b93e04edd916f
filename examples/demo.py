"""Cove's demo app: three kinds of endpoint in one file. Serve it with `cove serve examples/demo.py`."""

from fastapi import FastAPI

import cove

app = cove.App("demo")


@app.function()
@cove.fastapi_endpoint()
def square(x: int = 7):
    """GET /?x=42 -> {"square": 1764}"""
    return {"square": x**2}


@app.function()
@cove.fastapi_endpoint(method="POST")
def echo(item: dict):
    """POST a JSON object; it comes back with the keys sorted."""
    return dict(sorted(item.items()))


@app.function()
@cove.concurrent(max_inputs=20)
@cove.asgi_app()
def api():
    web = FastAPI(title="demo api")

    @web.get("/")
    async def root():
        return {"endpoints": ["/", "/hello/{name}"]}

    @web.get("/hello/{name}")
    async def hello(name: str):
        return {"message": f"Hello, {name}!"}

    return web
