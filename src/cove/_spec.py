"""Frozen messages that cross process boundaries: the manifest of an app and its functions.

The SDK records these at decoration time, the loader sends them to the control plane as JSON, and the
container entrypoint receives its own `FunctionSpec` back. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

WebKind = Literal["fastapi_endpoint", "asgi_app", "wsgi_app", "web_server", "http_server"]
WEB_KINDS: tuple[WebKind, ...] = ("fastapi_endpoint", "asgi_app", "wsgi_app", "web_server", "http_server")
#: Kinds whose container relays bytes to a server the user's code starts on `WebSpec.port`.
PORT_KINDS: tuple[WebKind, ...] = ("web_server", "http_server")
#: The request header that pins an HTTP server's client to one container (Modal's session affinity).
SESSION_HEADER = "Modal-Session-ID"

ImageStepKind = Literal[
    "debian_slim",
    "pip_install",
    "uv_pip_install",
    "pip_install_from_requirements",
    "pip_install_from_pyproject",
    "apt_install",
    "run_commands",
    "env",
    "workdir",
    "add_local_file",
    "add_local_dir",
    "add_local_python_source",
]


@dataclass(frozen=True)
class WebSpec:
    """How a function is exposed over HTTP (Modal's `WebhookConfig`)."""

    kind: WebKind
    method: str = "GET"
    label: str | None = None
    docs: bool = False
    custom_domains: tuple[str, ...] = ()
    requires_proxy_auth: bool = False
    port: int | None = None  # web_server, http_server
    startup_timeout_s: float = 5.0  # web_server, http_server
    exit_grace_period_s: float = 0.0  # http_server: time requests in flight get when it stops
    sessioned: bool = False  # http_server with @modal.sessioned(): every request needs a session token

    @property
    def relays_port(self) -> bool:
        """True when the container relays bytes to a server listening on `port`."""
        return self.kind in PORT_KINDS


@dataclass(frozen=True)
class ImageStep:
    """One layer of an image recipe. `args` holds JSON-compatible values only."""

    kind: ImageStepKind
    args: tuple[tuple[str, Any], ...] = ()
    force_build: bool = False

    def arg(self, name: str, default: Any = None) -> Any:
        for key, value in self.args:
            if key == name:
                return value
        return default


@dataclass(frozen=True)
class ImageSpec:
    """An image recipe: an ordered tuple of steps. Its hash names the built image."""

    steps: tuple[ImageStep, ...] = ()

    def recipe_hash(self) -> str:
        payload = json.dumps(_to_jsonable(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def python_version(self) -> str | None:
        for step in self.steps:
            if step.kind == "debian_slim":
                value = step.arg("python_version")
                return str(value) if value is not None else None
        return None


@dataclass(frozen=True)
class SecretRef:
    """A secret a function asks for: by name (resolved by the server) or inline values.

    Inline values (`Secret.from_dict`, `from_dotenv`, `env=`) travel only to the control plane, which
    injects them into the container's environment; they are never logged.
    """

    name: str | None = None
    required_keys: tuple[str, ...] = ()
    values: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # never show values
        if self.name is not None:
            return f"cove.Secret.from_name({self.name!r})"
        return f"cove.Secret(<{len(self.values)} inline keys>)"


@dataclass(frozen=True)
class VolumeMount:
    """A named Volume a function mounts read-write at `path` (`volumes={"/data": vol}`)."""

    path: str
    name: str
    create_if_missing: bool = False


@dataclass(frozen=True)
class FunctionSpec:
    """Everything the platform needs to run one function (or one web method of a class)."""

    tag: str  # "square", or "Model.predict" for a class method
    module_attr: str  # attribute of the user's module: the function, or the class for methods
    method_name: str | None = None  # for class methods
    web: WebSpec | None = None
    image: ImageSpec = field(default_factory=ImageSpec)
    secrets: tuple[SecretRef, ...] = ()
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    scaledown_window_s: float = 60.0
    timeout_s: float = 300.0
    startup_timeout_s: float | None = None
    max_inputs: int = 1
    target_inputs: int | None = None
    cpu: float | None = None
    memory_mib: int | None = None
    gpu: str | None = None
    block_network: bool = False
    is_generator: bool = False
    volumes: tuple[VolumeMount, ...] = ()

    @property
    def is_web(self) -> bool:
        return self.web is not None

    @property
    def effective_target_inputs(self) -> int:
        return self.target_inputs if self.target_inputs is not None else self.max_inputs


@dataclass(frozen=True)
class AppSpec:
    """The manifest of one `cove.App`: its name and its functions, in declaration order."""

    name: str | None
    functions: tuple[FunctionSpec, ...] = ()

    def function(self, tag: str) -> FunctionSpec:
        for fn in self.functions:
            if fn.tag == tag:
                return fn
        raise KeyError(tag)

    def to_json(self) -> str:
        return json.dumps(_to_jsonable(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AppSpec:
        return app_spec_from_dict(json.loads(text))


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def spec_to_dict(value: Any) -> Any:
    """A JSON-compatible form of any spec dataclass."""
    return _to_jsonable(value)


def _pairs(raw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((str(k), _freeze(v)) for k, v in raw)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def web_spec_from_dict(raw: dict[str, Any]) -> WebSpec:
    return WebSpec(
        kind=raw["kind"],
        method=raw.get("method", "GET"),
        label=raw.get("label"),
        docs=bool(raw.get("docs", False)),
        custom_domains=tuple(raw.get("custom_domains", ())),
        requires_proxy_auth=bool(raw.get("requires_proxy_auth", False)),
        port=raw.get("port"),
        startup_timeout_s=float(raw.get("startup_timeout_s", 5.0)),
        exit_grace_period_s=float(raw.get("exit_grace_period_s", 0.0)),
        sessioned=bool(raw.get("sessioned", False)),
    )


def image_spec_from_dict(raw: dict[str, Any]) -> ImageSpec:
    return ImageSpec(
        steps=tuple(
            ImageStep(kind=s["kind"], args=_pairs(s.get("args", ())), force_build=bool(s.get("force_build")))
            for s in raw.get("steps", ())
        )
    )


def secret_ref_from_dict(raw: dict[str, Any]) -> SecretRef:
    return SecretRef(
        name=raw.get("name"),
        required_keys=tuple(raw.get("required_keys", ())),
        values=tuple((str(k), str(v)) for k, v in raw.get("values", ())),
    )


def function_spec_from_dict(raw: dict[str, Any]) -> FunctionSpec:
    known = {f.name for f in dataclasses.fields(FunctionSpec)}
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
    kwargs["web"] = web_spec_from_dict(raw["web"]) if raw.get("web") else None
    kwargs["image"] = image_spec_from_dict(raw.get("image") or {})
    kwargs["secrets"] = tuple(secret_ref_from_dict(s) for s in raw.get("secrets", ()))
    kwargs["volumes"] = tuple(
        VolumeMount(
            path=str(v["path"]), name=str(v["name"]), create_if_missing=bool(v.get("create_if_missing"))
        )
        for v in raw.get("volumes", ())
    )
    return FunctionSpec(**kwargs)


def app_spec_from_dict(raw: dict[str, Any]) -> AppSpec:
    return AppSpec(
        name=raw.get("name"),
        functions=tuple(function_spec_from_dict(f) for f in raw.get("functions", ())),
    )
