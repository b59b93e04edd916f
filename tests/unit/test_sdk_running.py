"""Where an app's own functions are called: in-process with `.local()`, or in the running app
(`app.run()`, `cove run`, its containers); and the options `cove run` makes from a signature."""

from __future__ import annotations

import datetime

import click
import pytest

import cove
from cove.cli.run import options_for
from cove.exception import ExecutionError, InvalidError

app = cove.App("shop")


@app.function()
def square(x: int) -> int:
    return x * x


@app.cls()
class Model:
    size: int = cove.parameter(default=1)

    @cove.method()
    def predict(self, x: int) -> int:
        return self.size * x


def test_local_runs_in_process_and_remote_needs_the_app_running() -> None:
    assert square.local(3) == 9
    assert hasattr(square, "remote")  # as on Modal: the error comes with the call
    with pytest.raises(ExecutionError, match=r"'square' has not been hydrated.*App .* is not running"):
        square.remote(3)
    with pytest.raises(ExecutionError, match=r"'Model.predict' has not been hydrated"):
        Model(size=2).predict.remote(3)


def test_a_running_app_calls_its_ephemeral_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "_running", ("shop-run", "ephemeral"))
    target = square._remote("remote")
    assert (target.app_name, target.tag, target.kind) == ("shop-run", "square", "ephemeral")
    method = Model(size=2).predict.map._target
    assert (method.app_name, method.tag, method.kind) == ("shop-run", "Model.predict", "ephemeral")
    assert (method.params, method.method) == ({"size": 2}, "predict")


def test_in_a_container_functions_call_the_app_the_server_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVE_IS_REMOTE", "1")
    monkeypatch.setenv("COVE_APP_NAME", "shop")
    monkeypatch.setenv("COVE_APP_KIND", "deployed")
    target = square._remote("map")
    assert (target.app_name, target.kind) == ("shop", "deployed")


def _parse(function: object, *args: str) -> dict[str, object]:
    command = click.Command("t", params=options_for(function, "t"))  # type: ignore[arg-type]
    with command.make_context("t", list(args)) as ctx:
        return dict(ctx.params)


def test_cove_run_options_follow_the_signature() -> None:
    def main(
        n: int,
        rate: float = 0.5,
        word_list: str = "a",
        fast: bool = False,
        when: datetime.datetime | None = None,
    ) -> None:
        pass

    assert _parse(main, "--n", "3") == {"n": 3, "rate": 0.5, "word_list": "a", "fast": False, "when": None}
    parsed = _parse(main, "--n", "1", "--rate", "2", "--word-list", "b", "--fast", "--when", "2024-01-02")
    assert parsed == {
        "n": 1,
        "rate": 2.0,
        "word_list": "b",
        "fast": True,
        "when": datetime.datetime(2024, 1, 2),
    }
    with pytest.raises(click.MissingParameter):
        _parse(main)
    with pytest.raises(click.BadParameter):
        _parse(main, "--n", "x")


def test_cove_run_refuses_parameters_it_cannot_parse() -> None:
    def takes_list(items: list[int]) -> None:
        pass

    def takes_args(*args: str) -> None:
        pass

    with pytest.raises(InvalidError, match=r"'items' of t has type"):
        options_for(takes_list, "t")
    with pytest.raises(InvalidError, match=r"takes \*args"):
        options_for(takes_args, "t")
