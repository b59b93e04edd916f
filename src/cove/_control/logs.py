"""Container logs: kept per app in a bounded ring and a file, and fanned out to followers.

An app's file `NAME.log` is rotated to `NAME.log.1` (replacing the one before) when it reaches
`max_bytes`, so logs take at most about twice that per app; reading starts from both files.
A write the disk refuses (full) is dropped from the file but stays in the ring: logging never
fails the operation that logs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from cove.config import Settings

_RING = 2000
_FOLLOWER_QUEUE = 10000
DEFAULT_MAX_BYTES = Settings.log_max_bytes  # COVE_LOG_MAX_BYTES's default (config.py)

log = logging.getLogger("cove.logs")


@dataclass(frozen=True)
class LogRecord:
    """One line a container (or the platform, stream "system") wrote."""

    ts: float
    app: str
    function: str
    container: str
    stream: str
    line: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class LogHub:
    """Per-app rings of recent lines, an append-only file per app, and live followers."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._failing: set[str] = set()  # apps whose last file write failed (warned once)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._rings: dict[str, collections.deque[LogRecord]] = {}
        self._files: dict[str, IO[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogRecord | None]]] = {}

    def write(self, app: str, function: str, container: str, stream: str, line: str) -> None:
        record = LogRecord(time.time(), app, function, container, stream, line)
        if app not in self._rings:
            self._rings[app] = collections.deque(self._read_file(app), maxlen=_RING)
        self._rings[app].append(record)
        self._append(app, record.to_json() + "\n")
        for queue in self._followers.get(app, ()):
            if queue.qsize() < _FOLLOWER_QUEUE:
                queue.put_nowait(record)

    def _append(self, app: str, text: str) -> None:
        file = self._files.get(app)
        try:
            if file is None:
                file = self._files[app] = open(self._dir / f"{app}.log", "a", encoding="utf-8")  # noqa: SIM115
            file.write(text)
            file.flush()
            if file.tell() >= self._max_bytes:
                file.close()
                del self._files[app]
                os.replace(self._dir / f"{app}.log", self._dir / f"{app}.log.1")
        except OSError as exc:
            if file is not None and not file.closed:
                # Drop the partial line from the buffer, so the next write starts a clean one.
                self._files.pop(app, None)
                with contextlib.suppress(OSError):
                    file.close()
            if app not in self._failing:
                self._failing.add(app)
                log.warning("app=%s event=log_write_failed error=%r", app, exc)
            return
        self._failing.discard(app)

    def recent(self, app: str, tail: int | None = None) -> list[LogRecord]:
        if app not in self._rings:
            self._rings[app] = collections.deque(self._read_file(app), maxlen=_RING)
        ring = list(self._rings[app])
        return ring if tail is None else ring[-tail:] if tail > 0 else []

    def _read_file(self, app: str) -> list[LogRecord]:
        """After a server restart the ring starts from the app's log file."""
        lines: collections.deque[str] = collections.deque(maxlen=_RING)
        for path in (self._dir / f"{app}.log.1", self._dir / f"{app}.log"):
            try:
                with open(path, encoding="utf-8", errors="replace") as file:
                    lines.extend(file)
            except FileNotFoundError:
                continue
        records = []
        for line in lines:
            try:
                records.append(LogRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return records

    async def follow(
        self, app: str, tail: int = 0, since: float | None = None
    ) -> AsyncGenerator[LogRecord, None]:
        """Recent lines (the last `tail`, or all written at or after `since`), then every new line
        until `end(app)` or the consumer stops."""
        queue: asyncio.Queue[LogRecord | None] = asyncio.Queue()
        self._followers.setdefault(app, set()).add(queue)
        backlog = self.recent(app) if since is not None else self.recent(app, tail)
        try:
            for record in backlog:
                if since is None or record.ts >= since:
                    yield record
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._followers.get(app, set()).discard(queue)

    def end(self, app: str) -> None:
        """Tell followers of `app` that no more lines will come (the app stopped)."""
        for queue in self._followers.get(app, ()):
            queue.put_nowait(None)

    def close(self) -> None:
        for followers in self._followers.values():
            for queue in followers:
                queue.put_nowait(None)
        for file in self._files.values():
            file.close()
        self._files.clear()
