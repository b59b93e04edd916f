"""Settings: every environment variable Cove reads is in the one table below."""

from __future__ import annotations

import getpass
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from cove.exception import InvalidError

#: name -> (default, meaning). The only place environment variables are looked up.
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "COVE_HOME": ("~/.cove", "state directory: database, sockets, logs, image cache"),
    "COVE_WORKSPACE": (None, "workspace slug in URLs; defaults to the user name"),
    "COVE_HOST": ("127.0.0.1", "address the gateway listens on (loopback by default)"),
    "COVE_PORT": ("8000", "port the gateway listens on"),
    "COVE_BASE_DOMAIN": ("localhost", "domain under which endpoint host names live"),
    "COVE_DEV_SUFFIX": ("dev", "suffix appended to labels of ephemeral apps (1-8 alphanumerics)"),
    "COVE_SERVE_TIMEOUT": (None, "default for `cove serve --timeout`, in seconds"),
    "COVE_LOGLEVEL": ("INFO", "log level of the server and CLI"),
    "COVE_QUEUE_LIMIT": ("2000", "requests waiting for a container, per function, before 503"),
    "COVE_HTTP_TIMEOUT": ("150", "seconds before a slow web request gets Modal's 303 to poll for its result"),
    "COVE_DRAIN_S": (
        "300",
        "seconds a replaced version's WebSockets and streams may go on after a redeploy (then: 1001)",
    ),
    # -- gateway policy (issues 5 and 7): rate limit, client addresses, hostile-input limits
    "COVE_RATE_LIMIT_RPS": ("200", "workspace rate limit in requests/s at the gateway (0: off); 429 past it"),
    "COVE_RATE_LIMIT_BURST_S": ("5", "seconds' worth of COVE_RATE_LIMIT_RPS sent at once"),
    "COVE_TRUSTED_PROXIES": (
        None,
        "comma-separated IPs/CIDRs of proxies whose X-Forwarded-For/-Proto/-Host/-Port/-Prefix are believed "
        "(stripped from anyone else)",
    ),
    "COVE_MAX_BODY_BYTES": (str(4 * 1024**3), "largest request body in bytes, streamed (413 past it)"),
    "COVE_MAX_HEAD_BYTES": ("65536", "largest request line plus headers in bytes (431 past it)"),
    "COVE_MAX_REQUEST_LINE_BYTES": ("16384", "longest request target in bytes (414 past it)"),
    "COVE_HEADER_TIMEOUT_S": ("10", "seconds a client has to send a whole request head (408 past it)"),
    "COVE_BODY_TIMEOUT_S": ("10", "seconds a request body may stall, no byte arriving (408 past it)"),
    "COVE_SEND_TIMEOUT_S": ("60", "seconds a client may read nothing of its response before it is cut off"),
    "COVE_KEEPALIVE_TIMEOUT_S": ("75", "seconds an idle keep-alive client connection stays open"),
    "COVE_MAX_CONNECTIONS": ("10000", "client connections the gateway keeps open (503 past it)"),
    "COVE_GATEWAY_WORKERS": ("0", "gateway processes sharing its port, the server included (0: 1 per core)"),
    # -- end of gateway policy
    "COVE_IS_REMOTE": (None, "set to 1 inside containers: `cove.is_local()` is then False"),
    "COVE_CONTAINER_API": (
        None,
        "set inside containers: their app's scoped control socket, through which they call functions",
    ),
    "COVE_APP_NAME": (None, "set inside containers: the name of their app"),
    "COVE_APP_KIND": (None, "set inside containers: `deployed`, or `ephemeral` (cove serve/run)"),
    "COVE_VOLUME_MOUNTS": (
        None,
        "set inside containers: JSON {Volume name: mount path} of the mounted Volumes",
    ),
    "COVE_IMAGE_CACHE": (None, "built images and their layers; default COVE_HOME/images (may be shared)"),
    "COVE_FORCE_BUILD": (None, "1: `cove serve`/`cove deploy` rebuild every image layer"),
    "COVE_SANDBOX": (
        "auto",
        "`auto`: containers and image builds run under bubblewrap where it works; `off`: plain processes",
    ),
    "COVE_ZYGOTE": ("1", "`1`: containers are forked from warm zygotes; `0`: each is a fresh worker process"),
    "COVE_ZYGOTE_WINDOW": ("600", "seconds a function zygote outlives its function's last container"),
    "COVE_LOG_MAX_BYTES": (
        str(16 * 1024**2),
        "size in bytes at which an app's log file is rotated (one previous file, NAME.log.1, is kept)",
    ),
    "COVE_MAX_PIDS": (
        "1024",
        "processes and threads per container (cgroup pids.max; forks past it fail); 0: no cap",
    ),
    "COVE_DEBIAN_MIRROR": (
        "http://deb.debian.org/debian",
        "Debian mirror for the root filesystem of apt_install/run_commands images (debootstrap)",
    ),
    "COVE_SERVER_URL": (None, "control plane URL for the client library, e.g. http://10.0.0.5:9000"),
    "COVE_TOKEN": (None, "bearer token sent to COVE_SERVER_URL (create one with `cove token create`)"),
    "COVE_BACKEND": (
        "local",
        "where the server runs containers: `local` (this machine) or `ray` (a Ray cluster)",
    ),
    "COVE_RAY_ADDRESS": (
        None,
        "Ray cluster of the ray backend, e.g. 10.0.0.5:6379; default: Ray's own lookup",
    ),
}


def env(name: str) -> str | None:
    """The value of a Cove environment variable, or its default from `ENVIRONMENT`."""
    default, _ = ENVIRONMENT[name]
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def default(name: str) -> str:
    """The default of the setting `name` as written in `ENVIRONMENT` (the one place it is written)."""
    value, _ = ENVIRONMENT[name]
    if value is None:
        raise KeyError(f"{name} has no default")
    return value


def _setting(name: str) -> str:
    """The value of a setting that has a default: the environment's, else the default."""
    return env(name) or default(name)


BackendName = Literal["local", "ray"]

_SLUG_RE = re.compile(r"[^a-z0-9-]+")
_DEV_SUFFIX_RE = re.compile(r"^[a-zA-Z0-9]{1,8}$")


def slugify(text: str) -> str:
    """Lowercase, keep `[a-z0-9-]`, turn every other run of characters into one `-`."""
    return _SLUG_RE.sub("-", text.lower()).strip("-")


def _positive_float(name: str) -> float:
    text = env(name) or ""
    try:
        value = float(text)
    except ValueError:
        raise InvalidError(f"{name} must be a number of seconds, got {text!r}.") from None
    if not value > 0:
        raise InvalidError(f"{name} must be positive, got {text!r}.")
    return value


SandboxSetting = Literal["auto", "off"]


def _path(text: str | None) -> Path | None:
    return Path(os.path.expanduser(text)).resolve() if text else None


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = (env(name) or choices[0]).lower()
    if value not in choices:
        raise InvalidError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def force_build() -> bool:
    """COVE_FORCE_BUILD=1 (Modal's MODAL_FORCE_BUILD): rebuild every image layer on this deploy."""
    return (env("COVE_FORCE_BUILD") or "").lower() in ("1", "true", "yes")


# -- gateway policy (issues 5 and 7)


def _gateway_number(name: str, *, integer: bool = False, zero: bool = False) -> float:
    """A numeric gateway setting: positive (or zero when `zero`), whole when `integer`."""
    text = (env(name) or "").strip()
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidError(f"{name} must be {kind}, got {text!r}.") from None
    if not math.isfinite(value) or not (value >= 0 if zero else value > 0):
        raise InvalidError(f"{name} must be {'zero or more' if zero else 'positive'}, got {text!r}.")
    return value


def _trusted_proxies(name: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in (env(name) or "").split(",") if entry.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise InvalidError(
                f"{name} entry {entry!r} is not an IP address or CIDR network; e.g. 10.0.0.0/8,::1."
            ) from None
    return entries


# -- end of gateway policy


def backend_name(value: str, where: str) -> BackendName:
    """`value` as a backend name, or an error naming `where` it came from and the choices."""
    if value not in get_args(BackendName):
        choices = ", ".join(get_args(BackendName))
        raise InvalidError(f"{where} must be one of {choices}; got {value!r}.")
    return value  # type: ignore[return-value]


_DEFAULT_BACKEND = backend_name(default("COVE_BACKEND"), "COVE_BACKEND")
_DEFAULT_SANDBOX = cast("SandboxSetting", default("COVE_SANDBOX"))


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one process. Build with `Settings.from_env()`."""

    home: Path
    workspace: str
    host: str
    port: int
    base_domain: str
    dev_suffix: str
    log_level: str
    http_timeout_s: float = float(default("COVE_HTTP_TIMEOUT"))
    drain_s: float = float(default("COVE_DRAIN_S"))  # grace of a replaced version's long-lived connections
    # -- gateway policy (issues 5 and 7); see ENVIRONMENT
    rate_limit_rps: float = float(default("COVE_RATE_LIMIT_RPS"))  # 0: no rate limit
    rate_limit_burst_s: float = float(default("COVE_RATE_LIMIT_BURST_S"))
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = int(default("COVE_MAX_BODY_BYTES"))
    max_head_bytes: int = int(default("COVE_MAX_HEAD_BYTES"))
    max_request_line_bytes: int = int(default("COVE_MAX_REQUEST_LINE_BYTES"))
    header_timeout_s: float = float(default("COVE_HEADER_TIMEOUT_S"))
    body_timeout_s: float = float(default("COVE_BODY_TIMEOUT_S"))
    send_timeout_s: float = float(default("COVE_SEND_TIMEOUT_S"))
    keepalive_timeout_s: float = float(default("COVE_KEEPALIVE_TIMEOUT_S"))
    max_connections: int = int(default("COVE_MAX_CONNECTIONS"))
    gateway_workers: int = int(default("COVE_GATEWAY_WORKERS"))  # gateway processes; 0: one per core
    # -- end of gateway policy
    queue_limit: int = int(default("COVE_QUEUE_LIMIT"))
    backend: BackendName = _DEFAULT_BACKEND
    ray_address: str | None = None
    image_cache: Path | None = None
    sandbox: SandboxSetting = _DEFAULT_SANDBOX
    zygote: bool = default("COVE_ZYGOTE") == "1"
    zygote_window_s: float = float(default("COVE_ZYGOTE_WINDOW"))
    max_pids: int = int(default("COVE_MAX_PIDS"))  # per container; 0: no cap
    debian_mirror: str = default("COVE_DEBIAN_MIRROR")
    log_max_bytes: int = int(default("COVE_LOG_MAX_BYTES"))

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.path.expanduser(_setting("COVE_HOME"))).resolve()
        workspace = slugify(env("COVE_WORKSPACE") or getpass.getuser()) or "default"
        port_text = _setting("COVE_PORT")
        try:
            port = int(port_text)
        except ValueError:
            raise InvalidError(f"COVE_PORT must be an integer port, got {port_text!r}.") from None
        if not 0 <= port <= 65535:
            raise InvalidError(f"COVE_PORT must be between 0 and 65535, got {port}.")
        dev_suffix = _setting("COVE_DEV_SUFFIX")
        if not _DEV_SUFFIX_RE.match(dev_suffix):
            raise InvalidError(f"COVE_DEV_SUFFIX must be 1-8 letters or digits, got {dev_suffix!r}.")
        return cls(
            home=home,
            workspace=workspace,
            host=_setting("COVE_HOST"),
            port=port,
            base_domain=_setting("COVE_BASE_DOMAIN").lower(),
            dev_suffix=dev_suffix.lower(),
            log_level=_setting("COVE_LOGLEVEL").upper(),
            http_timeout_s=_positive_float("COVE_HTTP_TIMEOUT"),
            drain_s=_gateway_number("COVE_DRAIN_S", zero=True),
            # -- gateway policy (issues 5 and 7)
            rate_limit_rps=_gateway_number("COVE_RATE_LIMIT_RPS", zero=True),
            rate_limit_burst_s=_gateway_number("COVE_RATE_LIMIT_BURST_S"),
            trusted_proxies=_trusted_proxies("COVE_TRUSTED_PROXIES"),
            max_body_bytes=int(_gateway_number("COVE_MAX_BODY_BYTES", integer=True)),
            max_head_bytes=int(_gateway_number("COVE_MAX_HEAD_BYTES", integer=True)),
            max_request_line_bytes=int(_gateway_number("COVE_MAX_REQUEST_LINE_BYTES", integer=True)),
            header_timeout_s=_gateway_number("COVE_HEADER_TIMEOUT_S"),
            body_timeout_s=_gateway_number("COVE_BODY_TIMEOUT_S"),
            send_timeout_s=_gateway_number("COVE_SEND_TIMEOUT_S"),
            keepalive_timeout_s=_gateway_number("COVE_KEEPALIVE_TIMEOUT_S"),
            max_connections=int(_gateway_number("COVE_MAX_CONNECTIONS", integer=True)),
            gateway_workers=int(_gateway_number("COVE_GATEWAY_WORKERS", integer=True, zero=True)),
            # -- end of gateway policy
            queue_limit=int(_positive_float("COVE_QUEUE_LIMIT")),
            backend=backend_name(_setting("COVE_BACKEND"), "COVE_BACKEND"),
            ray_address=env("COVE_RAY_ADDRESS"),
            image_cache=Path(os.path.expanduser(cache)).resolve()
            if (cache := env("COVE_IMAGE_CACHE"))
            else None,
            sandbox=_choice("COVE_SANDBOX", ("auto", "off")),  # type: ignore[arg-type]
            zygote=_choice("COVE_ZYGOTE", ("1", "0")) == "1",
            zygote_window_s=_gateway_number("COVE_ZYGOTE_WINDOW", zero=True),
            max_pids=int(_gateway_number("COVE_MAX_PIDS", integer=True, zero=True)),
            debian_mirror=_setting("COVE_DEBIAN_MIRROR"),
            log_max_bytes=int(_gateway_number("COVE_LOG_MAX_BYTES", integer=True)),
        )

    @property
    def images_dir(self) -> Path:
        """Where built images live: COVE_IMAGE_CACHE, else COVE_HOME/images."""
        return self.image_cache or self.home / "images"

    @property
    def control_socket(self) -> Path:
        return self.home / "server.sock"
