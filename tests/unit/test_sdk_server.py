"""HTTP servers in the SDK: `@app.server()` (Modal 1.5) and `modal.experimental.http_server`."""

from __future__ import annotations

import textwrap
import types

import pytest

import cove
from cove._gateway.messages import scan_request_headers
from cove._spec import AppSpec
from cove.exception import InvalidError
from cove.functions import load_user_code
from cove.server import UNCAPPED_INPUTS

SERVER_SAMPLE = """
import cove

app = cove.App("edge")
events = []

@app.server(port=8080, target_concurrency=4, max_concurrency=10, exit_grace_period=5, min_containers=1)
class Api:
    @cove.enter()
    def start(self):
        events.append("start")

    @cove.exit()
    def stop(self):
        events.append("stop")

@app.cls(max_containers=3)
@cove.experimental.http_server(port=9000, proxy_regions=["us-east"], startup_timeout=60)
@cove.concurrent(target_inputs=8)
class Flash:
    @cove.enter()
    def start(self):
        events.append("flash")
"""


def load_module(source: str, name: str = "user_app") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


def test_app_server_records_one_http_server_spec_named_after_the_class() -> None:
    module = load_module(SERVER_SAMPLE)
    api, flash = module.app._manifest().functions
    assert isinstance(module.Api, cove.Server)
    assert (api.tag, api.module_attr, api.method_name) == ("Api", "Api", None)
    assert api.web is not None and api.web.kind == "http_server"
    assert (api.web.port, api.web.startup_timeout_s, api.web.exit_grace_period_s) == (8080, 30.0, 5.0)
    assert api.web.requires_proxy_auth  # Modal's Servers need proxy auth unless unauthenticated=True
    assert (api.target_inputs, api.max_inputs, api.min_containers) == (4, 10, 1)
    assert flash.web is not None and flash.web.kind == "http_server"
    assert (flash.web.port, flash.web.startup_timeout_s, flash.web.requires_proxy_auth) == (9000, 60.0, False)
    assert (flash.target_inputs, flash.max_inputs, flash.max_containers) == (8, UNCAPPED_INPUTS, 3)
    assert module.app.registered_web_endpoints == ["Api", "Flash"]


def test_server_specs_round_trip_through_json() -> None:
    manifest = load_module(SERVER_SAMPLE).app._manifest()
    assert AppSpec.from_json(manifest.to_json()) == manifest


def test_container_side_runs_the_hooks_of_a_fresh_instance() -> None:
    module = load_module(SERVER_SAMPLE)
    for spec in module.app._manifest().functions:
        user = load_user_code(module, spec)
        for hook in [*user.enter_snap, *user.enter]:
            hook()
        assert user.call() is None
        for hook in user.exit:
            hook()
    assert module.events == ["start", "stop", "flash"]


def test_target_concurrency_defaults_to_max_concurrency_else_one() -> None:
    module = load_module(
        """
        import cove
        app = cove.App("d")

        @app.server(max_concurrency=6)
        class Capped:
            @cove.enter()
            def start(self): ...

        @app.server()
        class Plain:
            @cove.enter()
            def start(self): ...
        """
    )
    capped, plain = module.app._manifest().functions
    assert (capped.target_inputs, capped.max_inputs) == (6, 6)
    assert (plain.target_inputs, plain.max_inputs) == (1, UNCAPPED_INPUTS)
    assert plain.web is not None and plain.web.port == 8000


def test_a_server_has_no_remote_calls_and_its_url_comes_from_the_deployed_app() -> None:
    module = load_module(SERVER_SAMPLE)
    with pytest.raises(InvalidError, match=r"cove\.Server\('Api'\) only serves HTTP: it has no \.remote\(\)"):
        module.Api.remote()
    with pytest.raises(InvalidError, match=r"cove\.Server\.from_name\(app_name, 'Api'\)\.get_url\(\)"):
        module.Api.get_url()
    assert repr(cove.Server.from_name("edge", "Api")) == "cove.Server.from_name('edge', 'Api')"
    with pytest.raises(InvalidError, match="must be a class name"):
        cove.Server.from_name("edge", "Api.start")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "@app.server()\n@cove.concurrent(max_inputs=4)\nclass S:\n"
            "    @cove.enter()\n    def start(self): ...\n",
            r"Server class S cannot be decorated with `@modal\.concurrent\(\)`\. "
            r"Please use `target_concurrency` param instead\.",
        ),
        (
            "@app.server()\n@cove.experimental.http_server(port=9000)\nclass S:\n"
            "    @cove.enter()\n    def start(self): ...\n",
            r"cannot have @modal\.experimental\.http_server\(\)",
        ),
        (
            "@app.server()\nclass S:\n    @cove.fastapi_endpoint()\n    def web(self): ...\n"
            "    @cove.enter()\n    def start(self): ...\n",
            r"only serves HTTP .* remove the web or @method decorators from: web",
        ),
        ("@app.server()\nclass S:\n    pass\n", r"needs an @modal\.enter\(\) method that starts the server"),
        ("@app.server()\ndef f(): ...\n", r"decorates a class"),
        ("@app.server(port=0)\nclass S: ...\n", r"`port` of @@app\.server must be a local port"),
        ("@app.server(startup_timeout=0)\nclass S: ...\n", r"`startup_timeout` .* positive number"),
        ("@app.server(exit_grace_period=-1)\nclass S: ...\n", r"`exit_grace_period` .* non-negative"),
        (
            "@app.server(target_concurrency=5, max_concurrency=2)\nclass S: ...\n",
            r"target_concurrency=5\) cannot be greater than max_concurrency=2",
        ),
        (
            "@app.server(target_concurrency=0)\nclass S: ...\n",
            r"target_concurrency=\.\.\.\) must be a positive",
        ),
        ("@app.server\nclass S: ...\n", r"without calling it\. Did you forget parentheses\?"),
        (
            "@app.cls()\n@cove.experimental.http_server()\nclass S: ...\n",
            r"requires the port your server listens on",
        ),
        (
            "@app.cls()\n@cove.experimental.http_server(port=8000)\ndef f(): ...\n",
            r"decorates a class whose @modal\.enter\(\) method starts the server",
        ),
        (
            "@app.cls()\n@cove.sessioned()\nclass S:\n    @cove.method()\n    def m(self): ...\n",
            r"@modal\.sessioned\(\) can only be applied to a Server",
        ),
        ("@app.server()\n@cove.sessioned()\ndef f(): ...\n", r"decorates a Server class"),
        (
            "@app.function()\n@cove.concurrent(target_inputs=4)\n@cove.fastapi_endpoint()\ndef f(): ...\n",
            r"needs max_inputs, e\.g\. @cove\.concurrent\(max_inputs=10, target_inputs=4\)",
        ),
    ],
)
def test_mistakes_are_explained(source: str, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        load_module("import cove\napp = cove.App('x')\n" + source)


def test_modal_experimental_is_importable_through_the_modal_alias() -> None:
    from cove._modal_compat import ALIASES

    assert ALIASES["modal.experimental"] == "cove.experimental"
    assert cove.experimental.http_server is cove.endpoints.http_server


def test_the_gateway_reads_modal_session_id_and_forwards_it() -> None:
    head = scan_request_headers([(b"Host", b"h"), (b"Modal-Session-ID", b" user-1 ")])
    assert head.session_id == b"user-1"
    assert b"Modal-Session-ID: " in head.header_lines
    assert scan_request_headers([(b"Host", b"h")]).session_id is None


def test_sessioned_marks_the_server_spec() -> None:
    module = load_module(
        """
        import cove
        app = cove.App("rooms")

        @app.server(port=8000)
        @cove.sessioned()
        class Room:
            @cove.enter()
            def start(self): ...
        """
    )
    (spec,) = module.app._manifest().functions
    assert spec.web is not None and spec.web.sessioned
    with pytest.raises(InvalidError, match=r"Sessions live on a deployed server"):
        module.Room.sessions  # noqa: B018


def test_the_gateway_takes_a_session_token_from_modal_authorization_and_drops_it() -> None:
    head = scan_request_headers([(b"Host", b"h"), (b"Modal-Authorization", b"Bearer ss-abc")])
    assert head.session_token == b"ss-abc"
    assert b"ss-abc" not in head.header_lines
    assert scan_request_headers([(b"Modal-Authorization", b"Basic x")]).session_token is None


class Room:
    @cove.enter()
    def start(self) -> None: ...


@pytest.mark.parametrize("decorator", ["function", "cls", "server"])
def test_the_three_app_decorators_refuse_a_bad_option_with_one_text_naming_themselves(decorator: str) -> None:
    """`@app.function`, `@app.cls` and `@app.server` parse their shared options in one place."""
    with pytest.raises(
        InvalidError,
        match=rf"^@app\.{decorator}\(\): min_containers \(3\) cannot be greater than max_containers \(1\)\. ",
    ):
        getattr(cove.App(), decorator)(min_containers=3, max_containers=1)
    with pytest.raises(
        InvalidError, match=rf"^@app\.{decorator}\(timeout=\.\.\.\) must be between 1 and 86400"
    ):
        getattr(cove.App(), decorator)(timeout=0)


def test_ignored_server_options_warn_at_the_users_decorator_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from cove import _options

    monkeypatch.setattr(_options, "_warned_options", set())
    with pytest.warns(
        _options.IgnoredOptionWarning, match=r"^@app\.server\(cloud='aws'\) is accepted"
    ) as record:
        cove.App().server(cloud="aws")
    assert record[0].filename == __file__


def test_app_volumes_are_defaults_of_servers_too() -> None:
    """`App(volumes=...)` mounts into every function's containers, a server's included."""
    app = cove.App("vols", volumes={"/data": cove.Volume.from_name("shared")})
    server = app.server(port=8000, serialized=True)(Room)
    assert [(m.path, m.name) for m in server.spec.volumes] == [("/data", "shared")]
