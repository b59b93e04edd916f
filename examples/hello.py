"""The first sample of the web endpoints guide: a function that answers GET with a string."""

from cove import App, web_endpoint

app = App()


@app.function()
@web_endpoint()
def f():
    return "Hello world!"
