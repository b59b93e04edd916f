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
  (`cove._runtime.affinity`); a new container is chosen when it goes away;
- with `@cove.sessioned()`, every request carries a sticky session's token
  (`Modal-Authorization: Bearer ...`, from `Server.from_name(...).sessions.start()`) and reaches
  that session's container, which is kept while the session lives.

A Server only serves HTTP: it has no `.remote()` and its class no `@method`s or web methods.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

from cove import _remote
from cove._client import control_plane
from cove._remote import RemoteTarget
from cove._spec import FunctionSpec, WebSpec
from cove.exception import InvalidError

if TYPE_CHECKING:
    from cove._members import ClassMembers, UserCode
    from cove._options import FunctionOptions

T = TypeVar("T")

#: `FunctionSpec.max_inputs` of a server without `max_concurrency`: no cap per container.
UNCAPPED_INPUTS = 1_000_000


class Server(Generic[T]):
    """A class registered with `@app.server()` (or `@app.cls()` + `modal.experimental.http_server`)."""

    _cove_app_decorator: ClassVar[str] = "@app.server"
    _target: RemoteTarget | None = None  # a server of a deployed app, looked up by name

    def __init__(self, user_cls: type[T], members: ClassMembers, spec: FunctionSpec) -> None:
        self._user_cls = user_cls
        self._members = members
        self._spec = spec

    @classmethod
    def from_name(
        cls, app_name: str, name: str, *, environment_name: str | None = None, client: object = None
    ) -> Server[Any]:
        """The server class `name` of the deployed app `app_name` (looked up on first use)."""
        _remote.check_cls_name(app_name, name)
        remote: Server[Any] = cls.__new__(cls)
        remote._target = RemoteTarget(app_name, name)
        return remote

    def get_url(self) -> str:
        """The server's URL (of a deployed app: `Server.from_name(app, name).get_url()`)."""
        if self._target is None:
            raise InvalidError(
                f"The URL of {self!r} is known once it is served: use the URL `cove serve`/`cove deploy` "
                f"printed, or cove.Server.from_name(app_name, {self._spec.tag!r}).get_url()."
            )
        url = self._target.web_url()
        if url is None:
            raise InvalidError(
                f"{self._target.app_name}.{self._target.tag} is not an HTTP server; it has no URL."
            )
        return url

    @property
    def sessions(self) -> ServerSessions:
        """Sticky sessions of a `@sessioned` server of a deployed app: `.start()`, `.terminate(token)`."""
        if self._target is None:
            raise InvalidError(
                "Sessions live on a deployed server: use "
                f"cove.Server.from_name(app_name, {self.tag!r}).sessions."
            )
        return ServerSessions(self._target.app_name, self._target.tag)

    @property
    def tag(self) -> str:
        return self._target.tag if self._target is not None else self._spec.tag

    @property
    def spec(self) -> FunctionSpec:
        return self._spec

    @property
    def specs(self) -> tuple[FunctionSpec, ...]:
        return (self._spec,)

    def _user_code(self) -> UserCode:
        return server_user_code(self._user_cls, self._members)

    def __getattr__(self, name: str) -> Any:
        if name in ("remote", "spawn", "map", "local", "remote_gen"):
            raise InvalidError(
                f"{self!r} only serves HTTP: it has no .{name}(). "
                "Send requests to its URL (printed by `cove serve`/`cove deploy`)."
            )
        raise AttributeError(name)

    def __repr__(self) -> str:
        if self._target is not None:
            return f"cove.Server.from_name({self._target.app_name!r}, {self._target.tag!r})"
        return f"cove.Server({self._spec.tag!r})"


@dataclass(frozen=True)
class ServerSession:
    """A started sticky session: send `Modal-Authorization: Bearer {token}` with its requests."""

    token: str
    container_id: str
    idle_timeout: float

    def __repr__(self) -> str:  # the token is a secret
        return f"cove.ServerSession(container_id={self.container_id!r}, idle_timeout={self.idle_timeout})"


class ServerSessions:
    """`Server.from_name(app, name).sessions` (Modal's `server.sessions`)."""

    def __init__(self, app_name: str, tag: str) -> None:
        self._path = f"/v1/servers/{quote(app_name, safe='')}/{quote(tag, safe='')}/sessions"

    def start(self, idle_timeout: float = 600) -> ServerSession:
        """Start a session on one container; it ends after `idle_timeout` s with no request in flight."""
        body = json.dumps({"idle_timeout": idle_timeout}).encode()
        reply = (
            control_plane()
            .request("POST", self._path, content=body, content_type="application/json", read_timeout_s=600)
            .json()
        )
        return ServerSession(reply["token"], reply["container_id"], float(reply["idle_timeout"]))

    def terminate(self, token: str) -> bool:
        """End the session now; False if it had ended already (or never existed)."""
        reply = control_plane().request("DELETE", f"{self._path}/{quote(token, safe='')}").json()
        return bool(reply["terminated"])


def server_spec(
    opts: FunctionOptions, where: str, name: str, web: WebSpec, *, cap: int | None, target: int | None
) -> FunctionSpec:
    """The spec of server class `name`: at most `cap` requests per container (default: no cap), and
    containers added to keep about `target` on each (default: `cap`, else 1)."""
    return opts.spec(
        where,
        tag=name,
        module_attr=name,
        method_name=None,
        web=web,
        is_generator=False,
        max_inputs=cap or UNCAPPED_INPUTS,
        target_inputs=target or cap or 1,
    )


def server_user_code(user_cls: type, members: ClassMembers) -> UserCode:
    """The container's view of a server class: a fresh instance's lifecycle hooks, nothing to call."""
    from cove._members import UserCode

    instance = user_cls()

    def bind(names: tuple[str, ...]) -> list[Callable[[], Any]]:
        return [types.MethodType(members.hooks[n].raw_f, instance) for n in names]

    return UserCode(
        call=lambda: None,
        enter_snap=bind(members.enter_snap),
        enter=bind(members.enter),
        exit=bind(members.exit),
    )


__all__ = [
    "UNCAPPED_INPUTS",
    "Server",
    "ServerSession",
    "ServerSessions",
    "server_spec",
    "server_user_code",
]
