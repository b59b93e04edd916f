"""A whole FastAPI app served with @asgi_app: POST /foo echoes JSON, GET /bar greets."""

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from cove import App, Image, asgi_app

web_app = FastAPI()
app = App()

image = Image.debian_slim().pip_install("boto3")


@web_app.post("/foo")
async def foo(request: Request):
    body = await request.json()
    return body


@web_app.get("/bar")
async def bar(arg="world"):
    return HTMLResponse(f"<h1>Hello Fast {arg}!</h1>")


@app.function(image=image)
@asgi_app()
def fastapi_app():
    return web_app
