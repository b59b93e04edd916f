"""`@app.cls`: class members, local instances, and resolving user code inside a container."""

from __future__ import annotations

import inspect
import textwrap
import types

import pytest

import cove
from cove._spec import AppSpec, FunctionSpec
from cove.exception import InvalidError, NotFoundError
from cove.functions import load_user_code


def square(x: int) -> dict[str, int]:
    return {"square": x**2}


def load_module(source: str, name: str = "user_app") -> types.ModuleType:
    """Execute `source` as a fresh module, as a loader importing the user's file would."""
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


def only_spec(app: cove.App) -> FunctionSpec:
    (spec,) = app._manifest().functions
    return spec


CLASS_SAMPLE = """
import cove
from cove import App, concurrent, enter, exit, fastapi_endpoint, method, parameter

app = App("models")
events = []

@app.cls(scaledown_window=300)
@concurrent(max_inputs=10)
class Model:
    size: str = parameter(default="base")

    @enter(snap=True)
    def download(self):
        events.append("download")

    @enter()
    def load(self):
        events.append("load")
        self.weights = f"weights-{self.size}"

    @enter()
    async def warm(self):
        events.append("warm")

    @exit()
    def close(self):
        events.append("close")

    @fastapi_endpoint(method="POST")
    def predict(self, item: dict):
        return {"weights": self.weights, "y": self.embed(item["x"])}

    @method()
    def embed(self, x: int) -> int:
        return x * 2

    def helper(self):
        return "not exposed"
"""


def test_class_manifest_has_one_spec_per_web_method_and_method() -> None:
    module = load_module(CLASS_SAMPLE)
    specs = module.app._manifest().functions
    assert [(s.tag, s.module_attr, s.method_name) for s in specs] == [
        ("Model.predict", "Model", "predict"),
        ("Model.embed", "Model", "embed"),
    ]
    predict, embed = specs
    assert predict.web is not None and predict.web.method == "POST"
    assert embed.web is None
    assert {s.max_inputs for s in specs} == {10}
    assert {s.scaledown_window_s for s in specs} == {300.0}
    assert module.app.registered_web_endpoints == ["Model.predict"]
    assert repr(module.Model) == "cove.Cls('Model')"


def test_class_runs_locally_with_parameters_and_enter_hooks() -> None:
    module = load_module(CLASS_SAMPLE)
    assert module.Model(size="large").predict.local({"x": 2}) == {"weights": "weights-large", "y": 4}
    assert module.events == ["download", "load", "warm"]


def test_class_web_methods_refuse_remote_invocation() -> None:
    module = load_module(CLASS_SAMPLE)
    with pytest.raises(InvalidError, match=r"call it locally: Model\(\)\.predict\.local\(\)"):
        module.Model().predict.remote({"x": 1})


def test_manifest_round_trips_through_json() -> None:
    module = load_module(CLASS_SAMPLE)
    manifest = module.app._manifest()
    assert AppSpec.from_json(manifest.to_json()) == manifest


# -- @app.cls validation --------------------------------------------------------------------------


def test_concurrent_on_a_method_is_refused_with_modals_hint() -> None:
    with pytest.raises(InvalidError, match=r"cannot be used on methods; decorate the class instead"):
        load_module(
            """
            from cove import App, concurrent, method
            app = App()

            @app.cls()
            class Model:
                @concurrent(max_inputs=2)
                @method()
                def f(self): ...
            """
        )


def test_custom_init_on_a_class_points_to_parameter_and_enter() -> None:
    with pytest.raises(InvalidError, match=r"defines __init__.*cove\.parameter.*@cove\.enter\(\)"):
        load_module(
            """
            from cove import App
            app = App()

            @app.cls()
            class Model:
                def __init__(self, size):
                    self.size = size
            """
        )


def test_parameters_need_a_supported_type_annotation() -> None:
    with pytest.raises(InvalidError, match=r"may be str, int, bool or bytes"):
        load_module(
            """
            from cove import App, parameter
            app = App()

            @app.cls()
            class Model:
                ratio: float = parameter(default=0.5)
            """
        )


def test_unknown_or_missing_parameters_are_explained() -> None:
    module = load_module(
        """
        from cove import App, method, parameter
        app = App()

        @app.cls()
        class Model:
            size: str = parameter()

            @method()
            def f(self):
                return self.size
        """
    )
    with pytest.raises(InvalidError, match=r"unexpected parameter\(s\) colour; declared parameters: size"):
        module.Model(colour="red")
    with pytest.raises(InvalidError, match=r"Missing parameter 'size'"):
        module.Model()
    assert module.Model(size="xl").f.local() == "xl"


def test_lifecycle_methods_take_only_self() -> None:
    with pytest.raises(InvalidError, match=r"must take only `self`"):
        load_module(
            """
            from cove import App, enter
            app = App()

            @app.cls()
            class Model:
                @enter()
                def load(self, path): ...
            """
        )


def test_app_cls_on_a_function_points_to_app_function() -> None:
    with pytest.raises(InvalidError, match=r"Use @app\.function\(\) for functions"):
        cove.App().cls()(square)


# -- container side ------------------------------------------------------------------------------


def test_load_user_code_returns_the_plain_function_without_hooks() -> None:
    module = load_module(
        """
        from cove import App, fastapi_endpoint
        app = App()

        @app.function()
        @fastapi_endpoint()
        def square(x: int):
            return {"square": x**2}
        """
    )
    code = load_user_code(module, only_spec(module.app))
    assert code.call is module.square.get_raw_f()
    assert (code.enter_snap, code.enter, code.exit) == ([], [], [])


def test_load_user_code_binds_the_method_and_ordered_hooks_to_one_fresh_instance() -> None:
    module = load_module(CLASS_SAMPLE)
    code = load_user_code(module, module.app._manifest().function("Model.predict"))
    instance = code.call.__self__  # type: ignore[attr-defined]
    assert [h.__name__ for h in code.enter_snap] == ["download"]
    assert [h.__name__ for h in code.enter] == ["load", "warm"]
    assert [h.__name__ for h in code.exit] == ["close"]
    assert all(h.__self__ is instance for h in [*code.enter_snap, *code.enter, *code.exit])  # type: ignore[attr-defined]
    assert instance.size == "base", "parameters take their defaults"
    for hook in [*code.enter_snap, *code.enter]:
        result = hook()
        if inspect.isawaitable(result):
            result.close()  # type: ignore[attr-defined]
    assert code.call({"x": 3}) == {"weights": "weights-base", "y": 6}
    assert list(inspect.signature(code.call).parameters) == ["item"]


def test_load_user_code_explains_a_missing_attribute() -> None:
    spec = FunctionSpec(tag="gone", module_attr="gone")
    with pytest.raises(NotFoundError, match=r"has no attribute 'gone'.*module level"):
        load_user_code(types.ModuleType("user_app"), spec)


def test_load_user_code_explains_an_undecorated_attribute() -> None:
    module = types.ModuleType("user_app")
    module.square = square  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError, match=r"not a cove Function: decorate it with @app\.function\(\)"):
        load_user_code(module, FunctionSpec(tag="square", module_attr="square"))
    with pytest.raises(NotFoundError, match=r"not a cove Cls"):
        load_user_code(module, FunctionSpec(tag="square.x", module_attr="square", method_name="x"))


def test_load_user_code_explains_an_unknown_method() -> None:
    module = load_module(CLASS_SAMPLE)
    spec = FunctionSpec(tag="Model.helper", module_attr="Model", method_name="helper")
    with pytest.raises(NotFoundError, match=r"no @cove.method or web method 'helper'"):
        load_user_code(module, spec)
