"""`App`, `@app.function`, `@app.cls`, the manifest, and resolving user code in a container."""

from __future__ import annotations

import inspect
import sys
import textwrap
import types
import warnings
from typing import Any

import pytest

import cove
from cove._spec import FunctionSpec, SecretRef
from cove.exception import DeprecationError, InvalidError


def square(x: int) -> dict[str, int]:
    """Square a number."""
    return {"square": x**2}


def hello() -> str:
    return "Hello world!"


class Empty:
    pass


def load_module(source: str, name: str = "user_app") -> types.ModuleType:
    """Execute `source` as a fresh module, as a loader importing the user's file would."""
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


def only_spec(app: cove.App) -> FunctionSpec:
    (spec,) = app._manifest().functions
    return spec


# -- App -------------------------------------------------------------------------------------------


def test_app_has_a_name_and_a_cove_repr() -> None:
    assert cove.App("shop").name == "shop"
    assert repr(cove.App("shop")) == "cove.App('shop')"
    assert repr(cove.App()) == "cove.App()"
    assert cove.App().name is None


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "ap-" + "a" * 22])
def test_invalid_app_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidError, match=r"Invalid App name"):
        cove.App(name)


def test_app_volumes_must_map_paths_to_volumes() -> None:
    assert cove.App(volumes={}).name is None
    with pytest.raises(InvalidError, match=r"App\(volumes=\.\.\.\): '/data' maps to .*not a cove.Volume"):
        cove.App(volumes={"/data": object()})


def test_app_volumes_are_defaults_that_a_function_can_override() -> None:
    app = cove.App(
        "vols", volumes={"/data": cove.Volume.from_name("a"), "/cache": cove.Volume.from_name("c")}
    )

    @app.function(volumes={"/data": cove.Volume.from_name("b", create_if_missing=True)}, serialized=True)
    def f() -> None: ...

    spec = app.registered_functions["f"].spec
    mounts = {m.path: (m.name, m.create_if_missing) for m in spec.volumes}
    assert mounts == {"/data": ("b", True), "/cache": ("c", False)}


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ({"data": "v"}, "must be absolute"),
        ({"/": "v"}, "needs for itself"),
        ({"/root": "v"}, "needs for itself"),
        ({"/cove/x": "v"}, "needs for itself"),
        ({"/proc/self": "v"}, "needs for itself"),
        ({"/a": "v", "/a/b": "v"}, "overlap"),
    ],
)
def test_volume_mount_paths_are_checked_eagerly(volumes: dict[str, str], message: str) -> None:
    real = {path: cove.Volume.from_name(name) for path, name in volumes.items()}
    app = cove.App("vols")
    with pytest.raises(InvalidError, match=message):
        app.function(volumes=real)(lambda: None)


def test_app_tags_are_validated() -> None:
    assert cove.App(tags={"team": "ml"}).tags == {"team": "ml"}
    with pytest.raises(InvalidError, match=r"tags"):
        cove.App(tags={"team": "has space"})


def test_app_secrets_must_be_a_list_of_secrets() -> None:
    with pytest.raises(InvalidError, match=r"use secrets=\[cove.Secret.from_name\('x'\)\]"):
        cove.App(secrets=cove.Secret.from_name("x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match=r"Use cove.Secret.from_name\('token'\)"):
        cove.App(secrets=["token"])  # type: ignore[list-item]


def test_manifest_lists_functions_in_declaration_order_under_the_app_name() -> None:
    app = cove.App("shop")
    app.function()(square)
    app.function()(hello)
    manifest = app._manifest()
    assert manifest.name == "shop"
    assert [f.tag for f in manifest.functions] == ["square", "hello"]


def test_duplicate_function_names_warn_and_the_last_definition_wins() -> None:
    app = cove.App()
    app.function()(square)
    with pytest.warns(UserWarning, match=r"already has a function named 'square'") as record:
        second = app.function(name="square")(hello)
    assert record[0].filename == __file__
    assert app.registered_functions["square"] is second
    assert len(app._manifest().functions) == 1


def test_declaring_is_inert_and_repeatable() -> None:
    """Decorating twice in two apps gives equal specs: nothing depends on hidden state."""
    first, second = cove.App("a"), cove.App("a")
    assert first.function()(square).spec == second.function()(square).spec


# -- Function ------------------------------------------------------------------------------------


def test_function_keeps_the_signature_and_runs_locally() -> None:
    app = cove.App()
    fn = app.function()(square)
    assert fn(3) == {"square": 9}
    assert fn.local(4) == {"square": 16}
    assert fn.get_raw_f() is square
    assert inspect.signature(fn) == inspect.signature(square)
    assert fn.__doc__ == "Square a number."
    assert (fn.tag, repr(fn)) == ("square", "cove.Function('square')")


def test_name_overrides_the_tag_but_not_the_module_attribute() -> None:
    spec = cove.App().function(name="sq")(square).spec
    assert (spec.tag, spec.module_attr) == ("sq", "square")


@pytest.mark.parametrize("method_name", ["remote", "spawn", "map", "remote_gen"])
def test_web_functions_refuse_remote_invocation_with_modals_message(method_name: str) -> None:
    fn = cove.App().function()(cove.fastapi_endpoint()(square))
    with pytest.raises(
        InvalidError,
        match=rf"A webhook function cannot be invoked for remote execution with \.{method_name}\. "
        r"Invoke this function via its web url or call it locally: square\.local\(\)",
    ):
        getattr(fn, method_name)


def test_missing_parentheses_on_app_function_are_named() -> None:
    with pytest.raises(InvalidError, match=r"Did you forget parentheses\? Use `@app\.function\(\)`\."):
        cove.App().function(square)
    with pytest.raises(InvalidError, match=r"Use `@app\.cls\(\)`"):
        cove.App().cls(Empty)


def test_app_function_on_a_class_points_to_app_cls() -> None:
    with pytest.raises(InvalidError, match=r"use @app\.cls\(\) for classes"):
        cove.App().function()(Empty)


def test_app_function_on_a_method_points_to_app_cls() -> None:
    with pytest.raises(InvalidError, match=r"cannot decorate a method"):

        class Model:
            @cove.App().function(serialized=True)
            def f(self) -> None: ...


def test_functions_defined_in_a_local_scope_need_serialized() -> None:
    def local_fn() -> int:
        return 1

    with pytest.raises(InvalidError, match=r"defined inside a function.*serialized=True"):
        cove.App().function()(local_fn)
    assert cove.App().function(serialized=True)(local_fn).local() == 1


def test_app_function_twice_is_refused() -> None:
    app = cove.App()
    with pytest.raises(InvalidError, match=r"already decorated with @app.function"):
        app.function()(app.function()(square))


def test_lifecycle_or_method_decorators_on_plain_functions_are_refused() -> None:
    with pytest.raises(InvalidError, match=r"only apply to methods of an @app\.cls\(\) class"):
        cove.App().function()(cove.enter()(hello))
    with pytest.raises(InvalidError, match=r"only applies to methods of an @app\.cls\(\) class"):
        cove.App().function()(cove.method()(hello))


def test_web_functions_reject_retries_with_modals_message() -> None:
    with pytest.raises(InvalidError, match=r"Web Functions do not support retries."):
        cove.App().function(retries=2)(cove.fastapi_endpoint()(square))
    assert cove.App().function(retries=2)(square).spec.web is None


def test_explicit_is_generator_on_a_web_function_is_refused() -> None:
    with pytest.raises(InvalidError, match=r"Webhooks cannot be generators"):
        cove.App().function(is_generator=True)(cove.fastapi_endpoint()(square))


# -- options -------------------------------------------------------------------------------------


def test_option_defaults_match_modal() -> None:
    spec = cove.App().function()(square).spec
    assert (spec.timeout_s, spec.scaledown_window_s, spec.min_containers, spec.max_containers) == (
        300.0,
        60.0,
        0,
        None,
    )
    assert (spec.max_inputs, spec.target_inputs, spec.startup_timeout_s) == (1, None, None)
    assert spec.image == cove.Image.debian_slim()._spec


@pytest.fixture
def fresh_option_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignored options warn once per process: start each test with none warned yet."""
    from cove import _options

    monkeypatch.setattr(_options, "_warned_options", set())


def test_options_are_recorded_in_the_spec(fresh_option_warnings: None) -> None:
    with pytest.warns(UserWarning, match=r"gpu='A10G'"):
        function = cove.App().function(
            min_containers=1,
            max_containers=4,
            buffer_containers=2,
            scaledown_window=300,
            timeout=600,
            startup_timeout=120,
            cpu=(0.5, 2.0),
            memory=(512, 2048),
            gpu="A10G",
            block_network=True,
        )(cove.concurrent(max_inputs=10, target_inputs=6)(square))
    spec = function.spec
    assert (spec.min_containers, spec.max_containers, spec.buffer_containers) == (1, 4, 2)
    assert (spec.scaledown_window_s, spec.timeout_s, spec.startup_timeout_s) == (300.0, 600.0, 120.0)
    assert (spec.cpu, spec.memory_mib, spec.gpu, spec.block_network) == (2.0, 2048, "A10G", True)
    assert (spec.max_inputs, spec.effective_target_inputs) == (10, 6)


def test_scalar_cpu_and_memory_are_recorded_as_is() -> None:
    spec = cove.App().function(cpu=1, memory=1024)(square).spec
    assert (spec.cpu, spec.memory_mib) == (1.0, 1024)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scaledown_window": 1}, "scaledown_window"),
        ({"scaledown_window": 1201}, "between 2 and 1200"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 86401}, "between 1 and 86400"),
        ({"timeout": None}, r"timeout=None\) is not allowed"),
        ({"startup_timeout": 0}, "startup_timeout"),
        (
            {"min_containers": 3, "max_containers": 2},
            r"min_containers \(3\) cannot be greater than max_containers",
        ),
        ({"min_containers": -1}, "min_containers"),
        ({"max_containers": 0}, "max_containers"),
        ({"memory": 0}, "memory"),
        ({"memory": (2048, 1024)}, "limit 1024.0 is below request 2048.0"),
        ({"cpu": "two"}, "cpu"),
        ({"gpu": 1}, "gpu"),
        ({"volumes": {"/x": object()}}, "not a cove.Volume"),
        ({"network_file_systems": {"/x": object()}}, "not supported by Cove"),
        ({"schedule": object()}, "schedule"),
        ({"proxy": object()}, "proxy"),
        ({"image": "python:3.11"}, "must be a cove.Image"),
        ({"retries": -1}, "retries"),
        ({"max_inputs": 1}, r"use @cove\.concurrent"),
        ({"name": "a.b"}, "name="),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        cove.App().function(**options)


def test_ignored_options_are_accepted_with_one_warning_each_naming_the_option(
    fresh_option_warnings: None,
) -> None:
    app = cove.App()
    with pytest.warns(UserWarning) as first:
        spec = app.function(cloud="aws", region="us-east", nonpreemptible=True, enable_memory_snapshot=True)(
            square
        ).spec
    assert spec.tag == "square"
    assert [str(w.message).split(" is accepted")[0] for w in first] == [
        "@app.function(cloud='aws')",
        "@app.function(region='us-east')",
        "@app.function(nonpreemptible=True)",
    ]
    assert first[0].filename == __file__, "the warning points at the user's decorator line"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.cls(region="eu-west", cloud="gcp")(type("Again", (), {}))  # warned already: silent
        app.function(enable_memory_snapshot=True, nonpreemptible=False, name="plain")(square)


def test_app_image_assignment_is_the_default_image_of_later_functions() -> None:
    app = cove.App("images")
    image = cove.Image.debian_slim().pip_install("httpx")
    app.image = image
    assert app.image is image
    assert app.function()(square).spec.image == image._spec
    with pytest.warns(UserWarning, match=r"after square had been decorated; they keep the image"):
        app.image = cove.Image.debian_slim()
    with pytest.raises(InvalidError, match=r"app.image must be a cove.Image"):
        app.image = "python:3.11"  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("legacy", "new", "field", "value", "expected"),
    [
        ("keep_warm", "min_containers", "min_containers", 2, 2),
        ("concurrency_limit", "max_containers", "max_containers", 5, 5),
        ("container_idle_timeout", "scaledown_window", "scaledown_window_s", 120, 120.0),
    ],
)
def test_renamed_keywords_are_mapped_with_a_deprecation_warning_naming_the_new_name(
    legacy: str, new: str, field: str, value: int, expected: float
) -> None:
    with pytest.warns(
        DeprecationError,
        match=rf"Deprecated on 2025-02-24: The '{legacy}' parameter has been renamed to '{new}'",
    ) as record:
        fn = cove.App().function(**{legacy: value})(square)
    assert record[0].filename == __file__, "the warning points at the user's decorator line"
    assert getattr(fn.spec, field) == expected


def test_allow_concurrent_inputs_maps_to_max_inputs_with_a_warning() -> None:
    with pytest.warns(DeprecationError, match=r"2025-04-09.*max_inputs=10.*@cove\.concurrent") as record:
        fn = cove.App().function(allow_concurrent_inputs=10)(square)
    assert record[0].filename == __file__
    assert fn.spec.max_inputs == 10


def test_legacy_and_new_spelling_together_are_refused() -> None:
    with pytest.raises(InvalidError, match=r"both keep_warm= and min_containers="):
        cove.App().function(keep_warm=1, min_containers=1)


def test_allow_concurrent_inputs_and_concurrent_together_are_refused() -> None:
    with pytest.warns(DeprecationError):
        decorator = cove.App().function(allow_concurrent_inputs=4)
    with pytest.raises(InvalidError, match=r"sets concurrency twice"):
        decorator(cove.concurrent(max_inputs=2)(square))


def test_app_image_and_secrets_are_defaults_and_env_becomes_a_trailing_inline_secret() -> None:
    app_image = cove.Image.debian_slim().pip_install("boto3")
    app = cove.App(image=app_image, secrets=[cove.Secret.from_name("app-secret")])
    spec = app.function(secrets=[cove.Secret.from_name("fn-secret")], env={"MODE": "prod", "DROP": None})(
        square
    ).spec
    assert spec.image == app_image._spec
    assert spec.secrets == (
        SecretRef(name="app-secret"),
        SecretRef(name="fn-secret"),
        SecretRef(values=(("MODE", "prod"),)),
    )
    own_image = cove.Image.debian_slim().pip_install("numpy")
    assert app.function(image=own_image, name="other")(square).spec.image == own_image._spec


# -- the seed guide's samples --------------------------------------------------------------------


def test_seed_hello_world_with_web_endpoint() -> None:
    with pytest.warns(DeprecationWarning, match=r"fastapi_endpoint"):
        module = load_module(
            """
            from cove import App, web_endpoint

            app = App()

            @app.function()
            @web_endpoint()
            def f():
                return "Hello world!"
            """
        )
    spec = only_spec(module.app)
    assert spec.web is not None
    assert (spec.tag, spec.module_attr, spec.web.kind, spec.web.method) == (
        "f",
        "f",
        "fastapi_endpoint",
        "GET",
    )
    assert module.f.local() == "Hello world!"


def test_seed_square_get_with_query_parameter() -> None:
    with pytest.warns(DeprecationWarning):
        module = load_module(
            """
            from cove import App, web_endpoint

            app = App()

            @app.function()
            @web_endpoint()
            def square(x: int):
                return {"square": x**2}
            """
        )
    spec = only_spec(module.app)
    assert spec.web is not None and spec.web.method == "GET"
    assert list(inspect.signature(module.square).parameters) == ["x"]
    assert module.square.local(42) == {"square": 1764}


def test_seed_square_post_with_dict_body() -> None:
    with pytest.warns(DeprecationWarning):
        module = load_module(
            """
            from typing import Dict

            from cove import App, web_endpoint

            app = App()

            @app.function()
            @web_endpoint(method="POST")
            def square(item: Dict):
                return {"square": item['x']**2}
            """
        )
    spec = only_spec(module.app)
    assert spec.web is not None and spec.web.method == "POST"
    assert module.square.local({"x": 42}) == {"square": 1764}


def test_seed_pydantic_item_with_html_response_and_image() -> None:
    with pytest.warns(DeprecationWarning):
        module = load_module(
            """
            from pydantic import BaseModel
            from fastapi.responses import HTMLResponse

            from cove import Image, App, web_endpoint

            image = Image.debian_slim().pip_install("boto3")
            app = App(image=image)

            class Item(BaseModel):
                name: str
                qty: int = 42

            @app.function()
            @web_endpoint(method="POST")
            def f(item: Item):
                import boto3
                # do things with boto3...
                return HTMLResponse(f"<html>Hello, {item.name}!</html>")
            """
        )
    spec = only_spec(module.app)
    assert spec.web is not None and spec.web.method == "POST"
    assert [step.kind for step in spec.image.steps] == ["debian_slim", "pip_install"]
    assert spec.image.steps[1].arg("packages") == ("boto3",)
    assert module.f.local(module.Item(name="Erik", qty=10)).body == b"<html>Hello, Erik!</html>"


def test_seed_fastapi_asgi_app() -> None:
    module = load_module(
        """
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse

        from cove import Image, App, asgi_app

        web_app = FastAPI()
        app = App()

        image = Image.debian_slim().pip_install("boto3")

        @web_app.post("/foo")
        async def foo(request: Request):
            body = await request.json()
            return body

        @web_app.get("/bar")
        async def bar(arg="world"):
            return HTMLResponse(f"<h1>Hello Fast {arg}!</h1>")

        @app.function(image=image)
        @asgi_app()
        def fastapi_app():
            return web_app
        """
    )
    spec = only_spec(module.app)
    assert spec.web is not None
    assert (spec.tag, spec.web.kind) == ("fastapi_app", "asgi_app")
    assert spec.image.steps[-1].arg("packages") == ("boto3",)
    assert module.fastapi_app.local() is module.web_app


def test_seed_flask_wsgi_app() -> None:
    module = load_module(
        """
        from cove import Image, App, wsgi_app

        app = App()
        image = Image.debian_slim().pip_install("flask")

        @app.function(image=image)
        @wsgi_app()
        def flask_app():
            from flask import Flask, request

            web_app = Flask(__name__)

            @web_app.get("/")
            def home():
                return "Hello Flask World!"

            @web_app.post("/echo")
            def echo():
                return request.json

            return web_app
        """
    )
    spec = only_spec(module.app)
    assert spec.web is not None and spec.web.kind == "wsgi_app"
    assert spec.image.steps[-1].arg("packages") == ("flask",)


def test_seed_web_server_on_port_8000() -> None:
    module = load_module(
        """
        import subprocess

        from cove import App, web_server

        app = App()

        @app.function()
        @web_server(8000)
        def my_file_server():
            subprocess.Popen("python -m http.server -d / 8000", shell=True)
        """
    )
    spec = only_spec(module.app)
    assert spec.web is not None
    assert (spec.web.kind, spec.web.port, spec.web.startup_timeout_s) == ("web_server", 8000, 5.0)


def test_seed_bearer_token_auth_with_named_secret() -> None:
    with pytest.warns(DeprecationWarning):
        module = load_module(
            """
            from fastapi import Depends, HTTPException, status, Request
            from fastapi.security import HTTPBearer, HTTPAuthorizationCredentials

            from cove import Secret, App, web_endpoint

            app = App("auth-example")

            auth_scheme = HTTPBearer()

            @app.function(secrets=[Secret.from_name("my-web-auth-token")])
            @web_endpoint()
            async def f(request: Request, token: HTTPAuthorizationCredentials = Depends(auth_scheme)):
                return "success!"
            """
        )
    spec = only_spec(module.app)
    assert module.app.name == "auth-example"
    assert spec.secrets == (SecretRef(name="my-web-auth-token"),)


# -- context helpers -----------------------------------------------------------------------------


def test_is_local_is_false_only_inside_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COVE_IS_REMOTE", raising=False)
    assert cove.is_local() is True
    monkeypatch.setenv("COVE_IS_REMOTE", "1")
    assert cove.is_local() is False


def test_current_call_and_input_ids_are_none_locally() -> None:
    assert cove.current_function_call_id() is None
    assert cove.current_input_id() is None


def test_importing_cove_does_not_alias_modal() -> None:
    from cove._modal_compat import ModalAliasFinder

    assert not any(isinstance(finder, ModalAliasFinder) for finder in sys.meta_path)
