"""Cove: serverless Python web endpoints on machines you own, with Modal's API.

```python
import cove

app = cove.App("shop")

@app.function()
@cove.fastapi_endpoint(method="POST")
def square(item: dict):
    return {"square": item["x"] ** 2}
```

`cove serve shop.py` serves it with live reload at `http://<workspace>--shop-square-dev.localhost:8000`;
`cove deploy shop.py` keeps it running. Code written for Modal runs unchanged once its import line
reads `import cove as modal` (or `from cove import ...`).

Decorators only record what to run: nothing here starts a process or opens a connection.
"""

from __future__ import annotations

from typing import NoReturn

from cove import exception, experimental
from cove.app import App
from cove.dict import Dict
from cove.endpoints import (
    asgi_app,
    batched,
    concurrent,
    enter,
    exit,
    fastapi_endpoint,
    method,
    sessioned,
    web_endpoint,
    web_server,
    wsgi_app,
)
from cove.exception import Error
from cove.functions import (
    Cls,
    Function,
    FunctionCall,
    current_function_call_id,
    current_input_id,
    is_local,
    parameter,
)
from cove.image import Image
from cove.queue import Queue
from cove.secret import Secret
from cove.server import Server
from cove.volume import Volume

__version__ = "0.1.0"

#: Names of Modal's public API that Cove does not provide (names Cove has never reach `__getattr__`).
_MODAL_ONLY = frozenset(
    {
        "Client", "CloudBucketMount", "Cron", "Dict", "FilePatternMatcher", "NetworkFileSystem",
        "Period", "Proxy", "Queue", "Retries", "Sandbox", "SandboxSnapshot", "SchedulerPlacement",
        "Server", "Service", "Tunnel", "Volume", "build", "enable_output", "forward", "interact",
    }
)  # fmt: skip


def __getattr__(name: str) -> NoReturn:
    """`modal.X` for an X Cove lacks: say what it became (Stub, Mount, gpu) or what Cove offers."""
    if name.startswith("__"):
        raise AttributeError(f"module 'cove' has no attribute {name!r}")
    if name == "Stub":
        raise exception.DeprecationError(
            "Deprecated on 2024-05-13: modal.Stub has been renamed to modal.App (Modal 1.0 removed the old "
            "name). Write `app = modal.App(...)` and decorate with `@app.function()`."
        )
    if name == "Mount":
        raise exception.DeprecationError(
            "modal.Mount was removed in Modal 1.0. Use Image.add_local_dir, Image.add_local_file or "
            "Image.add_local_python_source instead, e.g. "
            "`modal.Image.debian_slim().add_local_dir('assets', remote_path='/root/assets')`. "
            "See https://modal.com/docs/guide/modal-1-0-migration."
        )
    if name == "gpu":
        raise exception.DeprecationError(
            "GPU objects such as modal.gpu.A100() were removed in Modal 1.0: pass a string, "
            "e.g. @app.function(gpu='A100')."
        )
    supported = f"Cove provides: {', '.join(__all__)}."
    if name in _MODAL_ONLY:
        # Not an AttributeError: `from modal import Volume` would replace its message with a bare
        # "cannot import name".
        raise exception.InvalidError(
            f"modal.{name} is part of Modal's API that Cove does not provide (yet). {supported} "
            "Remove its use, or keep this app on Modal."
        )
    raise AttributeError(f"module 'cove' (imported as modal, too) has no attribute {name!r}. {supported}")


__all__ = [
    "App",
    "Cls",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "Queue",
    "Secret",
    "Server",
    "Volume",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enter",
    "exception",
    "exit",
    "experimental",
    "fastapi_endpoint",
    "is_local",
    "method",
    "parameter",
    "sessioned",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]
