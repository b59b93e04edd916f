"""Image plans: which layers a recipe has, what enters their keys, and how interpreters are chosen."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import cove
from cove._control import image_plan as images
from cove._control.image_plan import Interpreter, find_interpreter, make_plan, worker_requirements
from cove._control.image_steps import BuildOutput
from cove.exception import ImageBuildError

MIRROR = "http://deb.example.test/debian"
SERVER = Interpreter(
    "/opt/py/3.11.7/bin/python3.11", "3.11.7", "/opt/py/3.11.7", "/opt/py/3.11.7/lib/python3.11"
)
OTHERS = (
    Interpreter("/opt/py/3.11.2/bin/python3.11", "3.11.2", "/opt/py/3.11.2", "/x"),
    Interpreter("/opt/py/3.12.1/bin/python3.12", "3.12.1", "/opt/py/3.12.1", "/x"),
    Interpreter("/opt/py/3.12.4/bin/python3.12", "3.12.4", "/opt/py/3.12.4", "/x"),
    Interpreter("/opt/py/3.9.18/bin/python3.9", "3.9.18", "/opt/py/3.9.18", "/x"),
    Interpreter("/usr/bin/python3.13", "3.13.0", "/usr", "/usr/lib/python3.13"),
)


@pytest.fixture(autouse=True)
def fake_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interpreters are found without running any: the server's own comes first."""
    monkeypatch.setattr(images, "local_interpreters", lambda: (SERVER, *OTHERS))


def plan(image: cove.Image, **kwargs: bool) -> images.Plan:
    return make_plan(image._spec, mirror=MIRROR, **kwargs)


def keys(image: cove.Image) -> list[str]:
    return [layer.key for layer in plan(image).layers]


BASE = cove.Image.debian_slim(python_version="3.11")


def test_every_recipe_starts_with_a_base_layer_of_interpreter_and_worker_packages() -> None:
    layers = plan(BASE).layers
    assert len(layers) == 1
    assert layers[0].step is None
    assert "3.11.7" in layers[0].title


def test_the_same_recipe_has_the_same_keys_and_a_new_step_adds_one_layer() -> None:
    one = BASE.pip_install("humanize")
    assert keys(one) == keys(BASE.pip_install("humanize"))
    two = one.pip_install("rich")
    assert keys(two)[:2] == keys(one)
    assert len(keys(two)) == 3
    assert keys(BASE.pip_install("rich"))[0] == keys(one)[0]  # the base is shared


def test_different_packages_or_options_make_different_keys() -> None:
    assert keys(BASE.pip_install("a"))[-1] != keys(BASE.pip_install("b"))[-1]
    assert keys(BASE.pip_install("a"))[-1] != keys(BASE.pip_install("a", pre=True))[-1]
    assert keys(BASE.pip_install("a"))[-1] != keys(BASE.uv_pip_install("a"))[-1]


def test_an_env_step_enters_the_keys_of_later_layers_only() -> None:
    plain = keys(BASE.pip_install("a").pip_install("b"))
    with_env = keys(BASE.pip_install("a").env({"MODE": "x"}).pip_install("b"))
    assert with_env[:2] == plain[:2]
    assert with_env[2] != plain[2]
    # Set last, env changes no files: the image directory is the same, the env is applied at start.
    tail = plan(BASE.pip_install("a").env({"MODE": "x"}))
    assert tail.key == plan(BASE.pip_install("a")).key
    assert tail.env == (("MODE", "x"),)


def test_workdir_is_recorded_for_the_container() -> None:
    result = plan(BASE.workdir("/app").pip_install("a"))
    assert result.workdir == "/app"
    assert result.layers[-1].workdir == "/app"


def test_mounted_local_files_are_not_layers(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("1")
    mounted = BASE.pip_install("a").add_local_file(tmp_path / "data.txt", "/root/data.txt")
    assert keys(mounted) == keys(BASE.pip_install("a"))
    assert plan(mounted).files == ()


def test_copied_files_are_a_layer_keyed_by_their_contents(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("1")
    copied = BASE.add_local_file(tmp_path / "data.txt", "/etc/data.txt", copy=True)
    first = plan(copied)
    assert len(first.layers) == 2
    assert first.files == (("etc/data.txt", "/etc/data.txt"),)
    (tmp_path / "data.txt").write_text("2")
    assert plan(copied).key != first.key


def test_copied_dirs_honour_ignore_patterns_in_their_key(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.py").write_text("x")
    image = BASE.add_local_dir(tmp_path / "d", "/root/d", copy=True, ignore=["*.log"])
    before = plan(image).key
    (tmp_path / "d" / "noise.log").write_text("changes every run")
    assert plan(image).key == before
    (tmp_path / "d" / "keep.py").write_text("y")
    assert plan(image).key != before


def test_a_requirements_files_contents_enter_its_key(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("humanize\n")
    image = BASE.pip_install_from_requirements(requirements)
    before = plan(image).key
    requirements.write_text("humanize==4.0\n")
    assert plan(image).key != before


def test_a_missing_requirements_file_is_a_build_error_naming_it(tmp_path: Path) -> None:
    image = BASE.pip_install_from_requirements(tmp_path / "nope.txt")
    with pytest.raises(ImageBuildError, match=r"nope\.txt"):
        plan(image)


def test_pyproject_dependencies_and_optional_groups_are_resolved(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["humanize>=4"]\n'
        '[project.optional-dependencies]\nfast = ["orjson"]\n'
    )
    layer = plan(BASE.pip_install_from_pyproject(pyproject, optional_dependencies=["fast"])).layers[-1]
    assert layer.packages == ("humanize>=4", "orjson")
    with pytest.raises(ImageBuildError, match="no optional-dependencies group 'slow'"):
        plan(BASE.pip_install_from_pyproject(pyproject, optional_dependencies=["slow"]))


def test_apt_and_run_commands_need_the_debian_root_filesystem_from_there_on() -> None:
    result = plan(BASE.pip_install("a").apt_install("cowsay").run_commands("echo hi"))
    assert [layer.needs_rootfs for layer in result.layers] == [False, False, True, True]
    assert result.rootfs_key is not None
    assert plan(BASE.pip_install("a")).rootfs_key is None


def test_force_build_rebuilds_that_layer_and_every_later_one() -> None:
    result = plan(BASE.pip_install("a").pip_install("b", force_build=True).pip_install("c"))
    assert [layer.force for layer in result.layers] == [False, False, True, True]
    assert not any(
        layer.force for layer in plan(BASE.pip_install("b", force_build=True), step_force=False).layers
    )
    assert all(layer.force for layer in plan(BASE.pip_install("a"), force=True).layers)


def test_force_build_does_not_change_keys() -> None:
    assert plan(BASE.pip_install("a", force_build=True), step_force=False).key != ""
    forced = BASE.pip_install("a", force_build=True)
    assert keys(forced)[0] == keys(BASE.pip_install("a"))[0]


def test_the_servers_own_interpreter_wins_for_its_version_else_the_newest_patch() -> None:
    assert find_interpreter("3.11") is SERVER
    assert find_interpreter("3.11.2").version == "3.11.2"
    assert find_interpreter("3.12").version == "3.12.4"


def test_no_matching_interpreter_names_the_versions_available() -> None:
    with pytest.raises(ImageBuildError) as info:
        find_interpreter("3.10")
    message = str(info.value)
    assert "no Python 3.10 was found" in message
    assert "3.11.7" in message and "3.12.4" in message and "3.13.0" in message
    assert "too old for Cove: 3.9.18" in message


def test_an_interpreter_too_old_for_the_worker_is_refused_with_the_usable_ones() -> None:
    with pytest.raises(ImageBuildError, match=r"needs Python 3\.11 or newer"):
        find_interpreter("3.9")


def test_interpreters_outside_usr_are_bound_whole_and_usr_ones_only_on_a_rootfs() -> None:
    assert SERVER.binds(rootfs=False) == ("/opt/py/3.11.7",)
    usr = OTHERS[-1]
    assert usr.binds(rootfs=False) == ()
    assert usr.binds(rootfs=True) == ("/usr/bin/python3.13", "/usr/lib/python3.13")


def test_worker_packages_are_pinned_to_the_servers_versions() -> None:
    pins = worker_requirements()
    assert f"fastapi=={importlib.metadata.version('fastapi')}" in pins
    assert any(pin.startswith("uvicorn[standard]==") for pin in pins)
    assert len(pins) == len(images.WORKER_PACKAGES)


def test_step_titles_never_show_env_values() -> None:
    layer = plan(BASE.pip_install("a", env={"TOKEN": "s3cr3t"})).layers[-1]
    assert "s3cr3t" not in layer.title


def test_build_output_masks_secret_values_in_the_log_and_the_events(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    output = BuildOutput(tmp_path / "build.log", events.append, "img")
    output.hide(["hunter2", ""])
    output.line("token is hunter2, again hunter2")
    output.close()
    assert (tmp_path / "build.log").read_text() == "token is ***, again ***\n"
    assert events == [{"event": "log", "image": "img", "line": "token is ***, again ***"}]
    assert output.mask("xhunter2x") == "x***x"
