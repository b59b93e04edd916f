"""Everything the CLI prints goes through here (rich), so output stays consistent and testable."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.measure import Measurement
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

# soft_wrap: a URL must stay on one line whatever the terminal width, so it can be copied.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")


def info(message: str) -> None:
    out.print(message)


def success(message: str) -> None:
    out.print(f"[green]✓[/green] {escape(message)}")


def warning(message: str) -> None:
    err.print(f"[yellow]⚠[/yellow] {escape(message)}")


def error(message: str) -> None:
    err.print(f"[red]Error:[/red] {escape(message)}")


def user_error(text: str) -> None:
    """A traceback or message from the user's own code, shown verbatim."""
    err.print(escape(text), style="red")


def created_objects(app: dict[str, Any]) -> None:
    """The tree of web endpoints with one URL per line under each, as Modal's CLI prints it."""
    success("Created objects.")
    endpoints: Sequence[dict[str, Any]] = app.get("endpoints", ())
    functions: Sequence[str] = app.get("functions", ())
    if not endpoints and not functions:
        out.print("└── (no functions)")
    for index, tag in enumerate(functions):
        branch = "└──" if index == len(functions) - 1 and not endpoints else "├──"
        out.print(f"{branch} [green]✓[/green] Created function {escape(tag)}.")
    for index, endpoint in enumerate(endpoints):
        last = index == len(endpoints) - 1
        branch, stem = ("└──", "    ") if last else ("├──", "│   ")
        mark = " 🔑" if endpoint.get("requires_proxy_auth") else ""
        what = "server" if endpoint.get("kind") == "http_server" else "web function"
        out.print(f"{branch} [green]✓[/green] Created {what} {escape(endpoint['tag'])}{mark}")
        domains = endpoint.get("custom_domains") or ()
        url_branch = "├──" if domains else "└──"
        out.print(f"{stem}{url_branch} {endpoint['url']}", markup=False)
        for d_index, domain in enumerate(domains):
            d_branch = "└──" if d_index == len(domains) - 1 else "├──"
            out.print(f"{stem}{d_branch} Custom domain: {domain}", markup=False)


def serving(directory: str) -> None:
    out.print("⚡️ Serving... hit Ctrl-C to stop!")
    out.print(f"└── Watching {directory}.", markup=False)


def log_record(record: dict[str, Any]) -> None:
    container = str(record.get("container", "-"))
    color = _COLORS[hash(container) % len(_COLORS)]
    stream = record.get("stream")
    line = escape(str(record.get("line", "")))
    if stream == "system":
        out.print(f"[dim]{escape(container)} {line}[/dim]")
    elif stream == "stderr":
        out.print(f"[{color}]{escape(container)}[/{color}] [red]{line}[/red]")
    else:
        out.print(f"[{color}]{escape(container)}[/{color}] {line}")
    sys.stdout.flush()


def timestamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table at its natural width: names and ids are never cut or wrapped to fit a narrow
    terminal (the terminal wraps the long lines instead), so they can be copied whole."""
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, no_wrap=True)
    for row in rows:
        grid.add_row(*(escape(str(c)) for c in row))
    natural = Measurement.get(out, out.options.update_width(1_000_000), grid).maximum
    width = out.width
    out.width = max(width, natural)
    try:
        out.print(grid)
    finally:
        out.width = width


class BuildDisplay:
    """Image build progress: one line per image and one per step, not the build tools' output.

    In a terminal the running step is a spinner with its elapsed time and latest output line; each
    step ends as one `✓ Step i/n: title (1.2s)` line. The output itself is kept (by the server, in
    the log file named at the start) and printed in full only when the build fails (`failed`).
    """

    def __init__(self) -> None:
        self._live: Live | None = None
        self._lines: list[str] = []  # the current image's build output, for `failed`
        self._log_path = ""
        self._step = ""
        self._step_started = 0.0

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        image = str(event.get("image", ""))
        if kind == "image" and not event.get("cached"):
            self._lines = []
            self._log_path = str(event.get("log") or "")
            where = f"; log: {self._log_path}" if self._log_path else ""
            out.print(
                f"[bold]Building image {escape(image)}[/bold] ({event.get('layers')} layers{escape(where)})"
            )
        elif kind == "step":
            self._finish_step()
            index, total = event.get("index"), event.get("total")
            where = f"Step {index}/{total}" if total else "Step"
            self._step = f"{where}: {event.get('title', '')}"
            self._step_started = time.monotonic()
            self._refresh("")
        elif kind == "log":
            line = str(event.get("line", ""))
            self._lines.append(line)
            self._refresh(line)
        elif kind == "built":
            self._finish_step()
            success(f"Built image {image} in {event.get('seconds')}s.")

    def failed(self) -> bool:
        """The build failed: mark the step, then print its image's whole build output (if any)."""
        self._stop()
        if self._step:
            out.print(f"  [red]✗[/red] {escape(self._step)}")
            self._step = ""
        if self._lines:
            kept = f" (kept in {self._log_path})" if self._log_path else ""
            err.print(f"[bold]Build log{escape(kept)}:[/bold]")
            for line in self._lines:
                err.print(f"    {line}", markup=False, highlight=False)
        return bool(self._lines)

    def _finish_step(self) -> None:
        self._stop()
        if self._step:
            seconds = time.monotonic() - self._step_started
            out.print(f"  [green]✓[/green] {escape(self._step)} [dim]({seconds:.1f}s)[/dim]")
            self._step = ""

    def _refresh(self, latest: str) -> None:
        if not out.is_terminal or not self._step:
            return
        title = Text(f"{self._step} ")
        title.append(f"({time.monotonic() - self._step_started:.0f}s)", style="dim")
        view = Group(Spinner("dots", text=title), Text(f"    {latest}"[: out.width], style="dim"))
        if self._live is None:
            self._live = Live(view, console=out, transient=True, refresh_per_second=8)
            self._live.start()
        else:
            self._live.update(view)

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self._stop()
        sys.stdout.flush()
