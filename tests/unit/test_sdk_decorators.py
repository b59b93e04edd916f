"""The web, concurrency and class-member decorators: what they record and how misuse is explained."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import cove
from cove._spec import WebSpec
from cove.endpoints import Flags, PartialFunction
from cove.exception import InvalidError

# Plain module-level functions: containers import user code by name, so tests decorate these.


def square(x: int) -> dict[str, int]:
    return {"square": x**2}


def make_app() -> object:
    return object()


def make_app_with_param(config: str) -> object:
    return object()


def make_app_with_default(config: str = "x") -> object:
    return object()


async def make_app_async() -> object:
    return object()


def stream() -> Iterator[str]:
    yield "a"


async def astream() -> AsyncIterator[str]:
    yield "a"


class Plain:
    pass


# -- what gets recorded --------------------------------------------------------------------------


def test_fastapi_endpoint_records_method_label_docs_and_proxy_auth() -> None:
    pf = cove.fastapi_endpoint(method="post", label="my-api", docs=True, requires_proxy_auth=True)(square)
    assert isinstance(pf, PartialFunction)
    assert pf.web is not None
    assert (pf.web.kind, pf.web.method, pf.web.label, pf.web.docs, pf.web.requires_proxy_auth) == (
        "fastapi_endpoint",
        "POST",
        "my-api",
        True,
        True,
    )


def test_fastapi_endpoint_defaults_are_modals() -> None:
    pf = cove.fastapi_endpoint()(square)
    assert pf.web == WebSpec(kind="fastapi_endpoint", method="GET")


def test_partial_function_still_calls_the_function_locally() -> None:
    assert cove.fastapi_endpoint()(square)(3) == {"square": 9}


def test_web_endpoint_works_like_fastapi_endpoint_and_warns_naming_the_replacement() -> None:
    with pytest.warns(DeprecationWarning, match=r"renamed to `@fastapi_endpoint`") as record:
        pf = cove.web_endpoint(method="POST")(square)
    assert record[0].filename == __file__, "the warning points at the user's decorator line"
    assert pf.web == cove.fastapi_endpoint(method="POST")(square).web


def test_web_endpoint_wait_for_response_false_is_refused() -> None:
    with pytest.raises(InvalidError, match=r"wait_for_response=False"):
        cove.web_endpoint(wait_for_response=False)


def test_custom_domains_are_recorded_lowercased() -> None:
    pf = cove.asgi_app(custom_domains=["API.Example.com", "*.Apps.Example.org."])(make_app)
    assert pf.web is not None
    assert pf.web.custom_domains == ("api.example.com", "*.apps.example.org")


def test_custom_domains_as_a_bare_string_is_refused_with_the_list_spelling() -> None:
    with pytest.raises(InvalidError, match=r"custom_domains=\['api.example.com'\]"):
        cove.fastapi_endpoint(custom_domains="api.example.com")


def test_custom_domains_must_be_host_names() -> None:
    with pytest.raises(InvalidError, match=r"host name"):
        cove.wsgi_app(custom_domains=["https://api.example.com/x"])


def test_invalid_label_is_refused_with_an_example() -> None:
    with pytest.raises(InvalidError, match=r"label='my-api'"):
        cove.fastapi_endpoint(label="My_API")
    with pytest.raises(InvalidError, match=r"'my-api'"):
        cove.asgi_app(label=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["GET,POST", "", "G E T", ["GET"]])
def test_method_must_be_one_http_verb(bad: Any) -> None:
    with pytest.raises(InvalidError, match=r"one HTTP verb"):
        cove.fastapi_endpoint(method=bad)


def test_asgi_and_wsgi_record_their_kind() -> None:
    asgi = cove.asgi_app(label="x", requires_proxy_auth=True)(make_app)
    wsgi = cove.wsgi_app()(make_app)
    assert asgi.web is not None and wsgi.web is not None
    assert (asgi.web.kind, asgi.web.label, asgi.web.requires_proxy_auth) == ("asgi_app", "x", True)
    assert wsgi.web.kind == "wsgi_app"


def test_factories_may_have_defaulted_parameters() -> None:
    assert cove.asgi_app()(make_app_with_default).web is not None


def test_web_server_records_port_and_startup_timeout() -> None:
    pf = cove.web_server(8000, startup_timeout=30)(make_app)
    assert pf.web is not None
    assert (pf.web.kind, pf.web.port, pf.web.startup_timeout_s) == ("web_server", 8000, 30.0)


def test_concurrent_records_max_and_target_inputs() -> None:
    pf = cove.concurrent(max_inputs=10, target_inputs=4)(square)
    assert (pf.max_inputs, pf.target_inputs) == (10, 4)
    assert pf.flags & Flags.CONCURRENT


def test_concurrent_and_web_decorator_stack_in_either_order() -> None:
    below = cove.concurrent(max_inputs=8)(cove.fastapi_endpoint(method="POST")(square))
    above = cove.fastapi_endpoint(method="POST")(cove.concurrent(max_inputs=8)(square))
    for pf in (below, above):
        assert pf.web is not None and pf.web.method == "POST"
        assert pf.max_inputs == 8
        assert pf.raw_f is square


def test_method_infers_generators_and_accepts_an_override() -> None:
    assert cove.method()(stream).is_generator is True
    assert cove.method()(square).is_generator is False
    assert cove.method(is_generator=True)(square).is_generator is True


def test_enter_snap_and_exit_set_their_flags() -> None:
    assert cove.enter(snap=True)(square).flags & Flags.ENTER_PRE_SNAPSHOT
    assert cove.enter()(square).flags & Flags.ENTER_POST_SNAPSHOT
    assert cove.exit()(square).flags & Flags.EXIT


def test_batched_records_its_limits() -> None:
    pf = cove.batched(max_batch_size=8, wait_ms=100)(square)
    assert (pf.batch_max_size, pf.batch_wait_ms) == (8, 100)


@pytest.mark.parametrize(("size", "wait"), [(0, 10), (1001, 10), (4, -1), (4, 600_001)])
def test_batched_limits_are_validated(size: int, wait: int) -> None:
    with pytest.raises(InvalidError, match=r"max_batch_size|wait_ms"):
        cove.batched(max_batch_size=size, wait_ms=wait)


# -- misuse: order and parentheses ---------------------------------------------------------------


def test_web_decorator_above_app_function_says_to_swap_the_order() -> None:
    app = cove.App()
    fn = app.function()(square)
    with pytest.raises(
        InvalidError,
        match=r"Cannot stack @cove\.fastapi_endpoint on top of @app\.function\. "
        r"Hint: swap the order of the decorators\.",
    ):
        cove.fastapi_endpoint()(fn)


def test_concurrent_above_app_cls_says_to_swap_the_order() -> None:
    app = cove.App()
    cls = app.cls()(Plain)
    with pytest.raises(InvalidError, match=r"Cannot stack @cove\.concurrent on top of @app\.cls"):
        cove.concurrent(max_inputs=2)(cls)


@pytest.mark.parametrize(
    "decorator",
    ["fastapi_endpoint", "asgi_app", "wsgi_app", "concurrent", "method", "enter", "exit", "batched"],
)
def test_missing_parentheses_are_named(decorator: str) -> None:
    with pytest.raises(InvalidError, match=rf"Did you forget parentheses\? Use `@cove\.{decorator}\(\)`\."):
        getattr(cove, decorator)(square)


def test_web_endpoint_missing_parentheses_is_named() -> None:
    with pytest.raises(InvalidError, match=r"Use `@cove\.web_endpoint\(\)`"):
        cove.web_endpoint(square)


def test_positional_http_method_suggests_the_keyword() -> None:
    with pytest.raises(InvalidError, match=r'`@cove\.web_endpoint\(method="POST"\)`'):
        cove.web_endpoint("POST")
    with pytest.raises(InvalidError, match=r'`@cove\.fastapi_endpoint\(method="PUT"\)`'):
        cove.fastapi_endpoint("PUT")


def test_positional_label_on_asgi_app_suggests_the_keyword() -> None:
    with pytest.raises(InvalidError, match=r'`@cove\.asgi_app\(label="api"\)`'):
        cove.asgi_app("api")


# -- misuse: what the web function looks like ----------------------------------------------------


@pytest.mark.parametrize(("decorator", "kind"), [("asgi_app", "ASGI app"), ("wsgi_app", "WSGI app")])
def test_app_factories_cannot_take_parameters(decorator: str, kind: str) -> None:
    with pytest.raises(InvalidError, match=rf"{kind} function 'make_app_with_param' can't have parameters"):
        getattr(cove, decorator)()(make_app_with_param)


def test_web_server_function_cannot_take_parameters() -> None:
    with pytest.raises(InvalidError, match=r"can't have parameters"):
        cove.web_server(8000)(make_app_with_param)


@pytest.mark.parametrize("decorator", [cove.asgi_app(), cove.wsgi_app(), cove.web_server(8000)])
def test_app_factories_must_be_sync(decorator: Any) -> None:
    with pytest.raises(InvalidError, match=r"is an async function. Only sync Python functions are supported"):
        decorator(make_app_async)


@pytest.mark.parametrize("generator", [stream, astream])
def test_web_functions_cannot_be_generators(generator: Any) -> None:
    with pytest.raises(InvalidError, match=r"Webhooks cannot be generators.*StreamingResponse"):
        cove.fastapi_endpoint()(generator)


@pytest.mark.parametrize("port", ["8000", True, 0, -1, 65536, 8000.0, None])
def test_web_server_port_must_be_a_local_port(port: Any) -> None:
    with pytest.raises(
        InvalidError,
        match=r"First argument of @web_server must be a local port, such as @web_server\(8000\)\.",
    ):
        cove.web_server(port)


@pytest.mark.parametrize("timeout", [0, -1.5, "5"])
def test_web_server_startup_timeout_must_be_positive(timeout: Any) -> None:
    with pytest.raises(InvalidError, match=r"startup_timeout"):
        cove.web_server(8000, startup_timeout=timeout)


def test_web_decorator_on_a_class_suggests_a_method() -> None:
    with pytest.raises(InvalidError, match=r"cannot decorate a class.*applying it to a method"):
        cove.fastapi_endpoint()(Plain)
    with pytest.raises(InvalidError, match=r"cannot decorate a class"):
        cove.enter()(Plain)


def test_concurrent_may_decorate_a_class() -> None:
    assert cove.concurrent(max_inputs=3)(Plain).raw_f is Plain


# -- misuse: combinations --------------------------------------------------------------------------


def test_two_web_decorators_on_one_function_are_refused() -> None:
    with pytest.raises(InvalidError, match=r"Cannot set `web` twice"):
        cove.asgi_app()(cove.fastapi_endpoint()(make_app))


def test_concurrent_twice_is_refused() -> None:
    with pytest.raises(InvalidError, match=r"Cannot set `max_inputs` twice"):
        cove.concurrent(max_inputs=2)(cove.concurrent(max_inputs=3)(square))


def test_method_wrapping_a_web_endpoint_is_refused_with_modals_hint() -> None:
    with pytest.raises(
        InvalidError, match=r"should not be wrapped by `@method`.*remove the `@method` decorator"
    ):
        cove.method()(cove.fastapi_endpoint()(square))


def test_web_decorator_wrapping_a_method_is_refused() -> None:
    with pytest.raises(
        InvalidError, match=r"Callable decorators cannot be combined with web interface decorators"
    ):
        cove.fastapi_endpoint()(cove.method()(square))


def test_batched_and_web_cannot_be_combined() -> None:
    with pytest.raises(InvalidError, match=r"cannot be combined with web interface decorators"):
        cove.batched(max_batch_size=2, wait_ms=1)(cove.fastapi_endpoint()(square))


@pytest.mark.parametrize("lifecycle", [cove.enter(), cove.exit(), cove.enter(snap=True)])
def test_lifecycle_and_web_cannot_be_combined_in_either_order(lifecycle: Any) -> None:
    with pytest.raises(InvalidError, match=r"Lifecycle decorators .* cannot be combined"):
        lifecycle(cove.fastapi_endpoint()(square))
    with pytest.raises(InvalidError, match=r"Lifecycle decorators .* cannot be combined"):
        cove.fastapi_endpoint()(lifecycle(square))


def test_lifecycle_and_method_cannot_be_combined() -> None:
    with pytest.raises(InvalidError, match=r"with `@method`"):
        cove.enter()(cove.method()(square))


def test_concurrent_requires_max_inputs() -> None:
    with pytest.raises(TypeError, match=r"missing required argument: max_inputs"):
        cove.concurrent()


@pytest.mark.parametrize(("max_inputs", "target"), [(0, None), (True, None), (4, 5), (4, 0)])
def test_concurrent_limits_are_validated(max_inputs: Any, target: Any) -> None:
    with pytest.raises(InvalidError, match=r"max_inputs|target_inputs"):
        cove.concurrent(max_inputs=max_inputs, target_inputs=target)
