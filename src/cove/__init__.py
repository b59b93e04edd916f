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
