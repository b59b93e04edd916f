"""The client library against a real server: `Function.from_name(...).remote()`, `.spawn()`, `FunctionCall`,
`Cls.from_name(...)`, from separate Python processes, over the unix socket and over TCP with a token.

One app is deployed for the whole module; every client is a fresh `python -c` process whose working
directory does not hold the app's file (so the app's own classes cannot be imported there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, _processes_with_env, cove_command, host_request

pytestmark = pytest.mark.integration

APP = '''
import asyncio
import os

import cove

app = cove.App("clientlib")


class Boom(Exception):
    """Defined only in the app's module: a client cannot unpickle it."""


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
async def whoami(tag: str) -> dict:
    return {
        "tag": tag,
        "call_id": cove.current_function_call_id(),
        "input_id": cove.current_input_id(),
        "is_local": cove.is_local(),
    }


@app.function()
def fail(message: str) -> None:
    raise ValueError(message)


@app.function()
def boom() -> None:
    raise Boom("custom")


@app.function()
def read_fifo(path: str) -> str:
    with open(path) as fifo:  # blocks until the test opens the other end
        return fifo.read()


@app.function(timeout=1)
def read_fifo_with_timeout(path: str) -> str:
    with open(path) as fifo:
        return fifo.read()


@app.function()
def die() -> None:
    os._exit(3)


@app.function()
@cove.fastapi_endpoint()
def hello():
    return {"hello": "world"}


@app.cls()
class Model:
    greeting: str = cove.parameter(default="hello")

    @cove.enter()
    def load(self):
        self.loaded = f"{self.greeting}-loaded"

    @cove.method()
    def greet(self, name: str) -> str:
        return f"{self.loaded} {name}"

    @cove.method()
    async def agreet(self, name: str) -> str:
        await asyncio.sleep(0)
        return f"{self.loaded} {name} (async)"
'''

PRELUDE = """
import asyncio
import json
import traceback

import cove
# Not `import *`: cove.exception.TimeoutError would shadow the builtin that `.get(timeout=)` raises.
from cove.exception import (
    AuthError, ExecutionError, FunctionTimeoutError, InvalidError, NotFoundError, RemoteError,
)

def emit(value):
    print(json.dumps(value))
"""


@dataclass(frozen=True)
class Deployed:
    cove: CoveEnv
    client_dir: Path
    web_url: str
    api_url: str
    token: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    """A server (unix socket + token-gated TCP) with `clientlib` deployed; everything is stopped after."""
    home = Path(tempfile.mkdtemp(prefix="cove-"))
    cove = CoveEnv(home)
    # The functions meet the test through FIFOs in a host directory, which a sandboxed container
    # cannot see (tests/integration/test_isolation.py covers the sandbox).
    cove.env["COVE_SANDBOX"] = "off"
    (home / "src").mkdir()
    (home / "client").mkdir()
    app_file = home / "src" / "clientlib.py"
    app_file.write_text(APP)
    api_port = _free_port()
    read_fd, write_fd = os.pipe()
    with open(home / "test-server.log", "ab") as log:
        server = subprocess.Popen(
            [*cove_command(), "server", "--ready-fd", str(write_fd), "--listen", f"127.0.0.1:{api_port}"],
            env=cove.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as ready:  # one line once the server serves; EOF if it exits first
            assert ready.readline(), (
                "the server exited during startup:\n" + (home / "test-server.log").read_text()
            )
        result = cove.run("deploy", str(app_file))
        (web_url,) = URL_RE.findall(result.stdout)
        token_line = next(
            line for line in cove.run("token", "create").stdout.splitlines() if "COVE_TOKEN=" in line
        )
        token = token_line.split("COVE_TOKEN=", 1)[1].strip()
        yield Deployed(cove, home / "client", web_url, f"http://127.0.0.1:{api_port}", token)
    finally:
        with contextlib.suppress(Exception):
            cove.run("server", "stop", check=False, timeout=60)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for pid in _processes_with_env("COVE_HOME", str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def run_client(deployed: Deployed, code: str, **env: str) -> Any:
    """Run `code` in a new Python process; return what it passed to `emit(...)` (its last output line)."""
    process = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env={**deployed.cove.env, **env},
        cwd=deployed.client_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, f"client failed:\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return json.loads(process.stdout.splitlines()[-1])


def test_remote_returns_the_value_computed_in_a_container(deployed: Deployed) -> None:
    """`.remote()` runs the function in a container and returns its value; the function sees its call ids."""
    out = run_client(
        deployed,
        """
        square = cove.Function.from_name("clientlib", "square")
        emit([square.remote(7), cove.Function.from_name("clientlib", "whoami").remote("x")])
        """,
    )
    value, who = out
    assert value == 49
    assert who["tag"] == "x" and who["is_local"] is False
    assert who["call_id"].startswith("fc-") and who["input_id"].startswith("in-")


def test_spawn_then_from_id_in_another_process_gets_the_result(deployed: Deployed) -> None:
    """`.spawn()` returns a FunctionCall at once; another process gets its result with `from_id(id).get()`."""
    call_id = run_client(deployed, 'emit(cove.Function.from_name("clientlib", "square").spawn(9).object_id)')
    assert call_id.startswith("fc-")
    assert run_client(deployed, f"emit(cove.FunctionCall.from_id({call_id!r}).get())") == 81


def test_get_with_timeout_zero_on_a_running_call_raises_the_builtin_timeout_error(deployed: Deployed) -> None:
    """`.get(timeout=0)` polls: a call still running raises builtin TimeoutError; later `.get()` returns."""
    fifo = deployed.client_dir / "unblock-get"
    os.mkfifo(fifo)
    out = run_client(
        deployed,
        f"""
        call = cove.Function.from_name("clientlib", "read_fifo").spawn({str(fifo)!r})
        try:
            call.get(timeout=0)
            raised = None
        except TimeoutError as exc:
            raised = [type(exc).__module__, type(exc).__name__, str(exc)]
        with open({str(fifo)!r}, "w") as other_end:
            other_end.write("done")
        emit([raised, call.get()])
        """,
    )
    raised, value = out
    assert raised[:2] == ["builtins", "TimeoutError"] and "has not finished yet" in raised[2]
    assert value == "done"


def test_a_remote_value_error_reraises_as_value_error_with_the_remote_traceback(deployed: Deployed) -> None:
    """A remote ValueError re-raises locally as ValueError; its printed traceback shows the remote frames."""
    out = run_client(
        deployed,
        """
        try:
            cove.Function.from_name("clientlib", "fail").remote("bad thing")
        except ValueError as exc:
            emit([str(exc), "".join(traceback.format_exception(exc))])
        """,
    )
    message, printed = out
    assert message == "bad thing"
    assert "Remote traceback (fc-" in printed
    assert "clientlib.py" in printed and "raise ValueError(message)" in printed


def test_an_exception_class_the_client_cannot_import_becomes_remote_error(deployed: Deployed) -> None:
    """An exception that does not unpickle here is a RemoteError naming its type, message and traceback."""
    out = run_client(
        deployed,
        """
        try:
            cove.Function.from_name("clientlib", "boom").remote()
        except RemoteError as exc:
            emit(str(exc))
        """,
    )
    assert out.startswith("Boom: custom")
    assert 'raise Boom("custom")' in out


def test_web_functions_refuse_remote_and_give_their_url(deployed: Deployed) -> None:
    """`.remote()` on a web function raises InvalidError naming its URL; `get_web_url()` returns it."""
    out = run_client(
        deployed,
        """
        hello = cove.Function.from_name("clientlib", "hello")
        square = cove.Function.from_name("clientlib", "square")
        try:
            hello.remote()
        except InvalidError as exc:
            emit([str(exc), hello.get_web_url(), square.get_web_url()])
        """,
    )
    message, url, non_web_url = out
    assert message.startswith("A webhook function cannot be invoked for remote execution with .remote.")
    assert deployed.web_url in message
    assert url == deployed.web_url and non_web_url is None
    assert host_request("GET", url).json() == {"hello": "world"}


def test_cls_methods_run_on_instances_made_with_their_parameters_after_enter(deployed: Deployed) -> None:
    """`Cls.from_name(...)(**params).method.remote()` runs on an instance with those params, entered first."""
    out = run_client(
        deployed,
        """
        Model = cove.Cls.from_name("clientlib", "Model")
        emit([
            Model().greet.remote("ann"),
            Model(greeting="hi").greet.remote("bob"),
            Model(greeting="hi").agreet.remote("bob"),
        ])
        """,
    )
    assert out == ["hello-loaded ann", "hi-loaded bob", "hi-loaded bob (async)"]


def test_aio_forms_work_inside_asyncio_run(deployed: Deployed) -> None:
    """`.remote.aio`, `.spawn.aio`, `.get.aio` and `.map.aio` are awaitable twins of the blocking calls."""
    out = run_client(
        deployed,
        """
        async def main():
            square = cove.Function.from_name("clientlib", "square")
            call = await square.spawn.aio(6)
            return [
                await square.remote.aio(5),
                await call.get.aio(timeout=60),
                await cove.Cls.from_name("clientlib", "Model")(greeting="yo").greet.remote.aio("z"),
                [x async for x in square.map.aio([1, 2, 3])],
            ]

        emit(asyncio.run(main()))
        """,
    )
    assert out == [25, 36, "yo-loaded z", [1, 4, 9]]


def test_map_yields_results_in_input_order_or_the_exceptions(deployed: Deployed) -> None:
    """`.map()` yields one result per input in order; `return_exceptions=True` yields errors as values."""
    out = run_client(
        deployed,
        """
        square = cove.Function.from_name("clientlib", "square")
        fail = cove.Function.from_name("clientlib", "fail")
        errors = list(fail.map(["a", "b"], return_exceptions=True))
        emit([list(square.map(range(5))), [type(e).__name__ + ":" + str(e) for e in errors]])
        """,
    )
    assert out == [[0, 1, 4, 9, 16], ["ValueError:a", "ValueError:b"]]


def test_unknown_names_raise_not_found_error_with_modals_lookup_message(deployed: Deployed) -> None:
    """Unknown function, app or class method: NotFoundError("Lookup failed for ... from the '<app>' app")."""
    out = run_client(
        deployed,
        """
        messages = []
        for call in (
            lambda: cove.Function.from_name("clientlib", "nope").remote(),
            lambda: cove.Function.from_name("no-such-app", "square").remote(1),
            lambda: cove.Cls.from_name("clientlib", "Model")().nope.remote(),
        ):
            try:
                call()
            except NotFoundError as exc:
                messages.append(str(exc))
        emit(messages)
        """,
    )
    function, app, method = out
    assert function.startswith("Lookup failed for Function 'nope' from the 'clientlib' app")
    assert "Its functions: square, whoami" in function
    assert app.startswith("Lookup failed for Function 'square' from the 'no-such-app' app")
    assert "Methods of Model: greet, agreet" in method


def test_a_call_past_its_timeout_raises_function_timeout_error(deployed: Deployed) -> None:
    """A call running longer than the function's `timeout` raises FunctionTimeoutError naming the fix."""
    fifo = deployed.client_dir / "never-written"
    os.mkfifo(fifo)
    out = run_client(
        deployed,
        f"""
        try:
            cove.Function.from_name("clientlib", "read_fifo_with_timeout").remote({str(fifo)!r})
        except FunctionTimeoutError as exc:
            message = str(exc)
        emit(message)  # the container still reading the FIFO was killed (tests/faults)
        """,
    )
    assert "timed out after 1 s" in out and "@app.function(timeout=...)" in out


def test_a_container_that_dies_mid_call_fails_the_call_saying_so(deployed: Deployed) -> None:
    """A container that exits while running a call fails it with ExecutionError naming the exit."""
    out = run_client(
        deployed,
        """
        try:
            cove.Function.from_name("clientlib", "die").remote()
        except ExecutionError as exc:
            emit(str(exc))
        """,
    )
    assert "its container exited while running fc-" in out
    assert "cove app logs clientlib" in out


def test_remote_works_over_tcp_with_a_token_and_a_bad_token_is_refused(deployed: Deployed) -> None:
    """With COVE_SERVER_URL + COVE_TOKEN the client talks TCP; a wrong token raises AuthError."""
    code = """
        try:
            emit(cove.Function.from_name("clientlib", "square").remote(3))
        except AuthError as exc:
            emit("AuthError: " + str(exc))
        """
    elsewhere = str(deployed.client_dir / "no-home")  # no local server here: only the URL can work
    good = run_client(
        deployed, code, COVE_SERVER_URL=deployed.api_url, COVE_TOKEN=deployed.token, COVE_HOME=elsewhere
    )
    bad = run_client(
        deployed, code, COVE_SERVER_URL=deployed.api_url, COVE_TOKEN="ak-nope.as-nope", COVE_HOME=elsewhere
    )
    assert good == 9
    assert bad.startswith("AuthError: Missing or invalid token")
