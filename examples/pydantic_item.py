"""Pydantic validation and a FastAPI response type, on an image that pip-installs boto3."""

from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from cove import App, Image, web_endpoint

image = Image.debian_slim().pip_install("boto3")
app = App(image=image)


class Item(BaseModel):
    name: str
    qty: int = 42


@app.function()
@web_endpoint(method="POST")
def f(item: Item):
    import boto3  # noqa: F401  (the image provides it)

    # do things with boto3...
    return HTMLResponse(f"<html>Hello, {item.name}!</html>")
