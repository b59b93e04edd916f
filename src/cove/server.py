"""`Server`: a class whose `@enter` method starts an HTTP server, registered with `@app.server()`.

```python
@app.server(port=8000, target_concurrency=8, unauthenticated=True)
class Api:
    @modal.enter()
    def start(self):
        self.proc = subprocess.Popen(["python", "-m", "http.server", "8000"])
```

Modal 1.5's Servers (and the older `@app.cls` + `modal.experimental.http_server`) differ from web
functions in how the gateway treats their requests, which `cove._runtime.pool` implements:

- no queue: a request goes straight to a ready container, or is refused at once: `503` with
  `Retry-After` while none is ready (the refusal starts a container), `429` when every container
  already serves `max_concurrency` requests;
- containers are added to keep about `target_concurrency` requests on each;
- the `Modal-Session-ID` request header keeps a client on one container while it lives
  (`cove._runtime.affinity`); a new container is chosen when it goes away.

A Server only serves HTTP: it has no `.remote()` and its class no `@method`s or web methods.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar, Generic, TypeVar

from cove._spec import FunctionSpec
from cove.exception import InvalidError

T = TypeVar("T")

#: `FunctionSpec.max_inputs` of a server without `max_concurrency`: no cap per container.
UNCAPPED_INPUTS = 1_000_000


class Server(Generic[T]):
    """A class registered with `@app.server()` (or `@app.cls()` + `modal.experimental.http_server`)."""

    _cove_app_decorator: ClassVar[str] = "@app.server"

    def __init__(self, user_cls: type[T], members: Any, spec: FunctionSpec) -> None:
        self._user_cls = user_cls
        self._members = members
        self._spec = spec

    @property
    def tag(self) -> str:
        return self._spec.tag

    @property
    def spec(self) -> FunctionSpec:
        return self._spec

    @property
    def specs(self) -> tuple[FunctionSpec, ...]:
        return (self._spec,)

    def _user_code(self) -> Any:
        return server_user_code(self._user_cls, self._members)

    def __getattr__(self, name: str) -> Any:
        spec = self.__dict__.get("_spec")
        if spec is not None and name in ("remote", "spawn", "map", "local", "remote_gen"):
            raise InvalidError(
                f"Server {spec.tag!r} only serves HTTP: it has no .{name}(). "
                "Send requests to its URL (printed by `cove serve`/`cove deploy`)."
            )
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"cove.Server({self._spec.tag!r})"


def server_user_code(user_cls: type, members: Any) -> Any:
    """The container's view of a server class: a fresh instance's lifecycle hooks, nothing to call."""
    from cove.functions import UserCode

    instance = user_cls()

    def bind(names: tuple[str, ...]) -> list[Any]:
        return [types.MethodType(members.hooks[n].raw_f, instance) for n in names]

    return UserCode(
        call=lambda: None,
        enter_snap=bind(members.enter_snap),
        enter=bind(members.enter),
        exit=bind(members.exit),
    )


__all__ = ["UNCAPPED_INPUTS", "Server", "server_user_code"]
