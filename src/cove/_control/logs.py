"""Container logs: kept per app in a bounded ring and a file, and fanned out to followers."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

_RING = 2000
_FOLLOWER_QUEUE = 10000


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

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._rings: dict[str, collections.deque[LogRecord]] = {}
        self._files: dict[str, IO[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogRecord | None]]] = {}

    def write(self, app: str, function: str, container: str, stream: str, line: str) -> None:
        record = LogRecord(time.time(), app, function, container, stream, line)
        if app not in self._rings:
            self._rings[app] = collections.deque(self._read_file(app), maxlen=_RING)
        self._rings[app].append(record)
        file = self._files.get(app)
        if file is None:
            file = self._files[app] = open(self._dir / f"{app}.log", "a", encoding="utf-8")  # noqa: SIM115
        file.write(record.to_json() + "\n")
        file.flush()
        for queue in self._followers.get(app, ()):
            if queue.qsize() < _FOLLOWER_QUEUE:
                queue.put_nowait(record)

    def recent(self, app: str, tail: int | None = None) -> list[LogRecord]:
        if app not in self._rings:
            self._rings[app] = collections.deque(self._read_file(app), maxlen=_RING)
        ring = list(self._rings[app])
        return ring if tail is None else ring[-tail:] if tail > 0 else []

    def _read_file(self, app: str) -> list[LogRecord]:
        """After a server restart the ring starts from the app's log file."""
        path = self._dir / f"{app}.log"
        if not path.exists():
            return []
        records = []
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in collections.deque(file, maxlen=_RING):
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
