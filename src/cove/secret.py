"""Secrets: environment variables injected into a function's containers, by name or inline.

```python
cove.Secret.from_name("shop-token", required_keys=["AUTH_TOKEN"])   # created with `cove secret create`
cove.Secret.from_dict({"MODE": "prod"})                             # inline values
cove.Secret.from_dotenv()                                           # the nearest .env file
```

Values never appear in a repr, a str or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cove._spec import SecretRef
from cove.exception import InvalidError
from cove.functions import is_local

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DOTENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_DOUBLE_QUOTE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _check_key(where: str, key: object) -> str:
    if not isinstance(key, str) or not key or "=" in key or "\0" in key:
        raise InvalidError(
            f"{where}: environment variable names must be non-empty strings without '=', got {key!r}."
        )
    return key


def _key_list(where: str, keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        raise InvalidError(f"{where} takes a list of names: use [{keys!r}].")
    return tuple(_check_key(where, key) for key in keys)


@dataclass(frozen=True, repr=False)
class Secret:
    """A set of environment variables for a function. Build with the `from_*` constructors."""

    _ref: SecretRef

    @property
    def name(self) -> str | None:
        """The server-side name (`from_name`), or None for inline secrets."""
        return self._ref.name

    @staticmethod
    def from_name(
        name: str, *, required_keys: Sequence[str] = (), environment_name: str | None = None
    ) -> Secret:
        """A secret stored on the server (`cove secret create NAME KEY=VALUE`), resolved at deploy."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidError(
                f"Invalid secret name {name!r}: use up to 64 letters, digits, '-', '_' or '.', "
                "e.g. 'shop-token'."
            )
        # `environment_name` is accepted for Modal compatibility: Cove has a single environment.
        keys = _key_list("Secret.from_name(required_keys=...)", required_keys)
        return Secret(SecretRef(name=name, required_keys=keys))

    @staticmethod
    def from_dict(env_dict: Mapping[str, str | None] | None = None) -> Secret:
        """Inline values; keys whose value is None are dropped."""
        if env_dict is None:
            env_dict = {}
        if not isinstance(env_dict, Mapping):
            raise InvalidError(
                f"Secret.from_dict() takes a dict of str to str, got {type(env_dict).__name__}."
            )
        values: list[tuple[str, str]] = []
        for key, value in env_dict.items():
            _check_key("Secret.from_dict()", key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidError(
                    f"Secret.from_dict(): the value of {key!r} must be a str or None, "
                    f"got {type(value).__name__}."
                )
            values.append((key, value))
        return Secret(SecretRef(values=tuple(values)))

    @staticmethod
    def from_local_environ(env_keys: Sequence[str]) -> Secret:
        """Copy the named variables from this process's environment."""
        keys = _key_list("Secret.from_local_environ()", env_keys)
        missing = [key for key in keys if key not in os.environ]
        if missing and is_local():
            raise InvalidError(
                f"Secret.from_local_environ(): {', '.join(missing)} not set in the local environment. "
                "Export them before running, or drop them from the list."
            )
        return Secret(SecretRef(values=tuple((key, os.environ[key]) for key in keys if key in os.environ)))

    @staticmethod
    def from_dotenv(path: str | os.PathLike[str] | None = None, *, filename: str = ".env") -> Secret:
        """The values of the nearest `filename`, searching upward from `path` (default: the cwd).

        No file found gives an empty secret, as in Modal. Inside a container nothing is read: the
        values were injected when the function was deployed.
        """
        if not is_local():
            return Secret(SecretRef())
        if path is None:
            start = Path.cwd()
        else:
            start = Path(os.path.expanduser(os.fspath(path))).absolute()
            if not start.exists():
                raise InvalidError(
                    f"Secret.from_dotenv(): path {os.fspath(path)!r} ({start}) does not exist."
                )
        found = _find_upward(start, filename)
        if found is None:
            return Secret(SecretRef())
        values = parse_dotenv(found.read_text(encoding="utf-8"), source=str(found))
        return Secret(SecretRef(values=tuple(values.items())))

    def __repr__(self) -> str:
        ref = self._ref
        if ref.name is not None:
            return f"cove.Secret.from_name({ref.name!r})"
        return f"cove.Secret(<keys: {', '.join(key for key, _ in ref.values) or 'none'}>)"

    __str__ = __repr__


def _find_upward(start: Path, filename: str) -> Path | None:
    directory = start if start.is_dir() else start.parent
    for candidate_dir in (directory, *directory.parents):
        candidate = candidate_dir / filename
        if candidate.is_file():
            return candidate
    return None


def parse_dotenv(text: str, *, source: str = ".env") -> dict[str, str]:
    """Parse dotenv text: `KEY=VALUE`, `export KEY=VALUE`, `#` comments, '…' and "…" quotes.

    Double quotes understand `\\n`, `\\t`, `\\r`, `\\"` and `\\\\` and may span lines; single quotes
    are literal. Unquoted values end at ` #`. A bare `KEY` has the empty value. Errors name the
    line, never its content.
    """
    lines = text.lstrip("\ufeff").splitlines()
    values: dict[str, str] = {}
    index = 0
    while index < len(lines):
        lineno = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, _, rest = line.partition("=")
        key = key.strip()
        if not _DOTENV_KEY_RE.match(key):
            raise InvalidError(f"{source}, line {lineno}: expected KEY=VALUE with a name such as API_TOKEN.")
        rest = rest.strip()
        if rest[:1] in ("'", '"'):
            quote, body = rest[0], rest[1:]
            end = _closing_quote(body, quote)
            while end < 0:
                if index >= len(lines):
                    raise InvalidError(
                        f"{source}, line {lineno}: the {quote} quote of {key} is never closed."
                    )
                body += "\n" + lines[index]
                index += 1
                end = _closing_quote(body, quote)
            trailing = body[end + 1 :].strip()
            if trailing and not trailing.startswith("#"):
                raise InvalidError(
                    f"{source}, line {lineno}: unexpected text after the closing quote of {key}."
                )
            values[key] = _unescape(body[:end], quote)
        else:
            values[key] = re.split(r"\s#", rest, maxsplit=1)[0].strip()
    return values


def _closing_quote(body: str, quote: str) -> int:
    escaped = False
    for position, char in enumerate(body):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == quote:
            return position
    return -1


def _unescape(raw: str, quote: str) -> str:
    out: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, "")
        if quote == '"' and following in _DOUBLE_QUOTE_ESCAPES:
            out.append(_DOUBLE_QUOTE_ESCAPES[following])
        elif quote == "'" and following in ("'", "\\"):
            out.append(following)
        else:
            out.append("\\" + following)
    return "".join(out)


__all__ = ["Secret", "parse_dotenv"]
