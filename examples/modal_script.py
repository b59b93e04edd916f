"""A script written for Modal, unchanged: `import modal` resolves to Cove inside `cove serve`."""

import modal
from modal import App, fastapi_endpoint
from modal.exception import InvalidError

app = App("modal-script")


@app.function()
@fastapi_endpoint()
def hello(name: str = "world"):
    return {
        "hello": name,
        "modal_is_cove": modal.__name__ == "cove",
        "error_root": InvalidError.__mro__[1].__name__,
    }
