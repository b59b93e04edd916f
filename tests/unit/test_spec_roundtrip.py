"""The manifest survives the trip through JSON unchanged, and its image hash is stable."""

from __future__ import annotations

from cove._spec import (
    AppSpec,
    FunctionSpec,
    ImageSpec,
    ImageStep,
    SecretRef,
    WebSpec,
    app_spec_from_dict,
    spec_to_dict,
)


def _sample() -> AppSpec:
    image = ImageSpec(
        steps=(
            ImageStep("debian_slim", (("python_version", "3.11"),)),
            ImageStep("pip_install", (("packages", ("boto3", "humanize")),)),
        )
    )
    return AppSpec(
        name="shop",
        functions=(
            FunctionSpec(
                tag="square",
                module_attr="square",
                web=WebSpec(kind="fastapi_endpoint", method="POST", custom_domains=("api.example.com",)),
                image=image,
                secrets=(SecretRef(name="tok", required_keys=("A",)), SecretRef(values=(("K", "v"),))),
                max_containers=4,
                max_inputs=8,
            ),
            FunctionSpec(tag="Model.predict", module_attr="Model", method_name="predict"),
        ),
    )


def test_app_spec_round_trips_through_json() -> None:
    spec = _sample()
    assert AppSpec.from_json(spec.to_json()) == spec
    assert app_spec_from_dict(spec_to_dict(spec)) == spec


def test_recipe_hash_is_stable_and_sensitive() -> None:
    image = _sample().functions[0].image
    same = ImageSpec(steps=tuple(image.steps))
    other = ImageSpec(steps=(*image.steps, ImageStep("apt_install", (("packages", ("cowsay",)),))))
    assert image.recipe_hash() == same.recipe_hash()
    assert image.recipe_hash() != other.recipe_hash()
    assert image.python_version == "3.11"


def test_secret_ref_repr_never_shows_values() -> None:
    ref = SecretRef(values=(("AUTH_TOKEN", "hunter2"),))
    assert "hunter2" not in repr(ref)
    assert "hunter2" not in repr(_sample())


def test_bundle_skips_sockets_and_a_cove_home_inside_the_app(tmp_path) -> None:
    """A COVE_HOME inside the app's folder (with its live server socket) is not bundled."""
    import io
    import socket
    import tarfile

    from cove._bundle import make_bundle

    app_file = tmp_path / "app.py"
    app_file.write_text("print('hi')\n")
    home = tmp_path / "state"
    home.mkdir()
    (home / "cove.db").write_text("x")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home / "server.sock"))
    try:
        (tmp_path / "fifo.sock").symlink_to(home / "server.sock")
        data = make_bundle(AppSpec(name="a"), str(app_file))
    finally:
        listener.close()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert tar.getnames() == ["src/app.py"]
