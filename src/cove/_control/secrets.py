"""Named secrets: one JSON file per secret, readable by the server's user only (mode 0600)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cove._control.storage import writing
from cove._spec import SecretRef
from cove.exception import AlreadyExistsError, InvalidError, NotFoundError

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_KEY_CHARS = 16_384
MAX_VALUE_CHARS = 32_768


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: never its values."""

    name: str
    keys: tuple[str, ...]
    created_at: float


def validate_secret_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidError(
            f"Invalid secret name {name!r}: use 1-64 letters, digits, '.', '_' or '-', e.g. 'my-token'."
        )
    return name


def validate_secret_values(values: Mapping[str, str]) -> None:
    for key, value in values.items():
        if not _KEY_RE.match(key) or len(key) > MAX_KEY_CHARS:
            raise InvalidError(
                f"Invalid secret key {key!r}: keys are environment variable names "
                "([A-Za-z_][A-Za-z0-9_]*), e.g. AUTH_TOKEN."
            )
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidError(
                f"The value of secret key {key!r} is longer than {MAX_VALUE_CHARS} characters."
            )


class SecretStore:
    """Secrets under `COVE_HOME/secrets`, each file mode 0600 in a 0700 directory."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._dir, 0o700)

    def _path(self, name: str) -> Path:
        return self._dir / f"{validate_secret_name(name)}.json"

    def create(self, name: str, values: Mapping[str, str], *, force: bool = False) -> SecretInfo:
        if not values:
            raise InvalidError(f"Secret {name!r} needs at least one KEY=VALUE.")
        validate_secret_values(values)
        path = self._path(name)
        if path.exists() and not force:
            raise AlreadyExistsError(f"Secret {name!r} already exists. Use --force to overwrite it.")
        record = {"name": name, "created_at": time.time(), "values": dict(values)}
        tmp = path.with_suffix(".tmp")
        try:
            with writing(path):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    json.dump(record, file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)  # atomic: the old secret or the new one, never half of either
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SecretInfo(name, tuple(values), record["created_at"])  # type: ignore[arg-type]

    def get(self, name: str) -> dict[str, str]:
        try:
            record = json.loads(self._path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(
                f"Secret {name!r} not found. Create it with `cove secret create {name} KEY=VALUE`."
            ) from None
        return {str(k): str(v) for k, v in record["values"].items()}

    def list(self) -> list[SecretInfo]:
        infos = []
        for path in sorted(self._dir.glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            infos.append(SecretInfo(record["name"], tuple(record["values"]), float(record["created_at"])))
        return infos

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise NotFoundError(f"Secret {name!r} not found.") from None

    def resolve(self, refs: Iterable[SecretRef]) -> dict[str, str]:
        """The environment a container gets from its secrets: later secrets override earlier keys."""
        env: dict[str, str] = {}
        for ref in refs:
            if ref.name is not None:
                values = self.get(ref.name)
                missing = [k for k in ref.required_keys if k not in values]
                if missing:
                    raise NotFoundError(
                        f"Secret {ref.name!r} is missing required key(s) {', '.join(missing)}. "
                        f"Recreate it with `cove secret create {ref.name} --force ...`."
                    )
                env.update(values)
            env.update(dict(ref.values))
        return env
