"""Settings: every environment variable Cove reads is in the one table below."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path

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
    "COVE_IS_REMOTE": (None, "set to 1 inside containers: `cove.is_local()` is then False"),
    "COVE_SERVER_URL": (None, "control plane URL for the client library, e.g. http://10.0.0.5:9000"),
    "COVE_TOKEN": (None, "bearer token sent to COVE_SERVER_URL (create one with `cove token create`)"),
}


def env(name: str) -> str | None:
    """The value of a Cove environment variable, or its default from `ENVIRONMENT`."""
    default, _ = ENVIRONMENT[name]
    value = os.environ.get(name)
    return value if value not in (None, "") else default


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
    http_timeout_s: float = 150.0
    queue_limit: int = 2000

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.path.expanduser(env("COVE_HOME") or "~/.cove")).resolve()
        workspace = slugify(env("COVE_WORKSPACE") or getpass.getuser()) or "default"
        port_text = env("COVE_PORT") or "8000"
        try:
            port = int(port_text)
        except ValueError:
            raise InvalidError(f"COVE_PORT must be an integer port, got {port_text!r}.") from None
        if not 0 <= port <= 65535:
            raise InvalidError(f"COVE_PORT must be between 0 and 65535, got {port}.")
        dev_suffix = env("COVE_DEV_SUFFIX") or "dev"
        if not _DEV_SUFFIX_RE.match(dev_suffix):
            raise InvalidError(f"COVE_DEV_SUFFIX must be 1-8 letters or digits, got {dev_suffix!r}.")
        return cls(
            home=home,
            workspace=workspace,
            host=env("COVE_HOST") or "127.0.0.1",
            port=port,
            base_domain=(env("COVE_BASE_DOMAIN") or "localhost").lower(),
            dev_suffix=dev_suffix.lower(),
            log_level=(env("COVE_LOGLEVEL") or "INFO").upper(),
            http_timeout_s=_positive_float("COVE_HTTP_TIMEOUT"),
            queue_limit=int(_positive_float("COVE_QUEUE_LIMIT")),
        )

    @property
    def control_socket(self) -> Path:
        return self.home / "server.sock"
