"""Query parameters become arguments: GET /?x=42 -> {"square": 1764}."""

from cove import App, web_endpoint

app = App()


@app.function()
@web_endpoint()
def square(x: int):
    return {"square": x**2}
