"""A POST endpoint taking any JSON body: POST {"x": 42} -> {"square": 1764}."""

from typing import Dict

from cove import App, web_endpoint

app = App()


@app.function()
@web_endpoint(method="POST")
def square(item: Dict):
    return {"square": item["x"] ** 2}
