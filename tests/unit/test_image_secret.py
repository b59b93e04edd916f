"""`Image` recipes (steps, validation, hash) and `Secret` constructors (values never shown)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import cove
from cove._spec import ImageStep, SecretRef
from cove.exception import InvalidError
from cove.secret import parse_dotenv

LOCAL_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def steps(image: cove.Image) -> list[ImageStep]:
    return list(image._spec.steps)


# -- Image: base and packages --------------------------------------------------------------------


def test_debian_slim_defaults_to_the_local_python_version() -> None:
    (step,) = steps(cove.Image.debian_slim())
    assert (step.kind, step.arg("python_version")) == ("debian_slim", LOCAL_PYTHON)
    assert cove.Image.debian_slim("3.12")._spec.python_version == "3.12"


def test_debian_slim_refuses_a_float_version_like_modal() -> None:
    with pytest.raises(TypeError, match=r"should be a string, not a float: use python_version='3.1'"):
        cove.Image.debian_slim(3.10)  # type: ignore[arg-type]


def test_debian_slim_refuses_a_malformed_version() -> None:
    with pytest.raises(InvalidError, match=r"must look like '3.11'"):
        cove.Image.debian_slim("python3")


def test_pip_install_flattens_lists_and_keeps_order() -> None:
    image = cove.Image.debian_slim().pip_install("zeta", ["alpha", "mid==1.0"], ("beta",))
    assert steps(image)[1].arg("packages") == ("zeta", "alpha", "mid==1.0", "beta")


def test_pip_install_records_only_options_that_were_given() -> None:
    step = steps(
        cove.Image.debian_slim().pip_install("x", index_url="https://pypi.example/simple", pre=True)
    )[1]
    assert dict(step.args) == {"packages": ("x",), "index_url": "https://pypi.example/simple", "pre": True}
    assert steps(cove.Image.debian_slim().pip_install("x", force_build=True))[1].force_build is True


def test_installing_nothing_returns_the_same_image() -> None:
    base = cove.Image.debian_slim()
    assert base.pip_install() is base
    assert base.apt_install([]) is base


def test_builder_methods_return_new_images_and_leave_the_base_unchanged() -> None:
    base = cove.Image.debian_slim()
    with_boto = base.pip_install("boto3")
    assert len(steps(base)) == 1 and len(steps(with_boto)) == 2


def test_non_string_packages_are_refused() -> None:
    with pytest.raises(InvalidError, match=r"pip_install\(\) expects strings"):
        cove.Image.debian_slim().pip_install(3)  # type: ignore[arg-type]


def test_every_supported_step_is_recorded(tmp_path: Path) -> None:
    image = (
        cove.Image.debian_slim("3.11")
        .apt_install("ffmpeg", "git")
        .uv_pip_install("fastapi", requirements=["reqs.txt"])
        .pip_install_from_requirements("requirements.txt")
        .pip_install_from_pyproject("pyproject.toml", optional_dependencies=["web"])
        .run_commands("echo hi", ["echo a", "echo b"])
        .env({"MODE": "prod"})
        .workdir("/root/app")
    )
    kinds = [s.kind for s in steps(image)]
    assert kinds == [
        "debian_slim",
        "apt_install",
        "uv_pip_install",
        "pip_install_from_requirements",
        "pip_install_from_pyproject",
        "run_commands",
        "env",
        "workdir",
    ]
    recorded = steps(image)
    assert recorded[2].arg("requirements") == (os.path.abspath("reqs.txt"),)
    assert recorded[3].arg("path") == os.path.abspath("requirements.txt"), "paths are recorded, not read"
    assert recorded[4].arg("optional_dependencies") == ("web",)
    assert recorded[5].arg("commands") == ("echo hi", "echo a", "echo b")
    assert recorded[6].arg("vars") == (("MODE", "prod"),)


def test_env_values_must_be_strings_and_are_not_echoed() -> None:
    with pytest.raises(InvalidError, match=r"the value of 'PORT' must be a str, got int") as info:
        cove.Image.debian_slim().env({"PORT": 8123})  # type: ignore[dict-item]
    assert "8123" not in str(info.value)


def test_build_steps_accept_named_secrets_only() -> None:
    image = cove.Image.debian_slim().pip_install("x", secrets=[cove.Secret.from_name("pypi-token")])
    assert steps(image)[1].arg("secrets") == ("pypi-token",)
    with pytest.raises(InvalidError, match=r"named secrets only"):
        cove.Image.debian_slim().run_commands("x", secrets=[cove.Secret.from_dict({"A": "b"})])


def test_repr_shows_the_recipe_but_never_env_values() -> None:
    image = cove.Image.debian_slim("3.11").pip_install("boto3").env({"TOKEN": "s3cr3t-value"})
    text = repr(image)
    assert text == "cove.Image.debian_slim(python_version='3.11').pip_install('boto3').env(TOKEN=<hidden>)"
    assert "s3cr3t-value" not in text


@pytest.mark.parametrize(
    "constructor",
    ["from_registry", "from_dockerfile", "micromamba", "from_aws_ecr", "from_gcp_artifact_registry"],
)
def test_unsupported_constructors_name_what_is_supported(constructor: str) -> None:
    with pytest.raises(InvalidError, match=r"not supported by Cove yet.*debian_slim\(\) plus pip_install"):
        getattr(cove.Image, constructor)("python:3.11")


def test_removed_copy_methods_point_to_add_local() -> None:
    with pytest.raises(InvalidError, match=r"add_local_dir\(\.\.\., copy=True\)"):
        cove.Image.debian_slim().copy_local_dir("x", "/x")


# -- Image: recipe hash --------------------------------------------------------------------------


def test_same_recipe_gives_the_same_hash() -> None:
    def build() -> cove.Image:
        return cove.Image.debian_slim("3.11").apt_install("git").pip_install("boto3", "fastapi")

    assert build()._spec.recipe_hash() == build()._spec.recipe_hash()
    assert build() == build()


@pytest.mark.parametrize(
    "other",
    [
        cove.Image.debian_slim("3.12").apt_install("git").pip_install("boto3", "fastapi"),
        cove.Image.debian_slim("3.11").apt_install("git").pip_install("fastapi", "boto3"),
        cove.Image.debian_slim("3.11").apt_install("git").pip_install("boto3", "fastapi", pre=True),
        cove.Image.debian_slim("3.11").pip_install("boto3", "fastapi").apt_install("git"),
    ],
)
def test_a_different_recipe_gives_a_different_hash(other: cove.Image) -> None:
    base = cove.Image.debian_slim("3.11").apt_install("git").pip_install("boto3", "fastapi")
    assert other._spec.recipe_hash() != base._spec.recipe_hash()


# -- Image: local files ----------------------------------------------------------------------------


def test_add_local_file_records_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    step = steps(cove.Image.debian_slim().add_local_file("data.txt", "/root/"))[1]
    assert step.arg("local_path") == str(tmp_path / "data.txt")
    assert step.arg("remote_path") == "/root/data.txt"
    assert step.arg("copy", False) is False


def test_add_local_file_needs_an_absolute_remote_path(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(InvalidError, match=r"remote_path must be an absolute path"):
        cove.Image.debian_slim().add_local_file(tmp_path / "data.txt", "data.txt")


def test_add_local_file_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidError, match=r"is not a file"):
        cove.Image.debian_slim().add_local_file(tmp_path / "nope.txt", "/root/nope.txt")


def test_inside_a_container_local_paths_are_not_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The user's module is re-imported in the container, where the local files don't exist."""
    monkeypatch.setenv("COVE_IS_REMOTE", "1")
    image = cove.Image.debian_slim().add_local_dir(tmp_path / "absent", "/root/absent")
    assert steps(image)[1].arg("local_path") == str(tmp_path / "absent")


def test_add_local_dir_records_ignore_globs(tmp_path: Path) -> None:
    step = steps(cove.Image.debian_slim().add_local_dir(tmp_path, "/root/src", ignore=["*.pyc", ".git/"]))[1]
    assert step.arg("ignore") == ("*.pyc", ".git/")


@pytest.mark.parametrize("ignore", [lambda path: True, "*.pyc"])
def test_add_local_dir_ignore_must_be_a_list_of_globs(tmp_path: Path, ignore: Any) -> None:
    with pytest.raises(InvalidError, match=r"list of glob patterns"):
        cove.Image.debian_slim().add_local_dir(tmp_path, "/root/src", ignore=ignore)


def test_add_local_python_source_resolves_modules_without_importing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cove_test_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "sub" / "__init__.py").write_text("")
    (tmp_path / "cove_test_single.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    step = steps(cove.Image.debian_slim().add_local_python_source("cove_test_pkg", "cove_test_single"))[1]
    assert step.arg("modules") == ("cove_test_pkg", "cove_test_single")
    assert step.arg("paths") == (str(package.resolve()), str((tmp_path / "cove_test_single.py").resolve()))
    assert "cove_test_pkg" not in sys.modules and "cove_test_single" not in sys.modules


def test_add_local_python_source_names_a_missing_module() -> None:
    with pytest.raises(InvalidError, match=r"'no_such_module_xyz' was not found locally"):
        cove.Image.debian_slim().add_local_python_source("no_such_module_xyz")


def test_build_steps_after_mounted_local_files_are_refused(tmp_path: Path) -> None:
    mounted = cove.Image.debian_slim().add_local_dir(tmp_path, "/root/src")
    with pytest.raises(InvalidError, match=r"Run `image\.add_local_\*` commands last.*`copy=True`"):
        mounted.pip_install("boto3")
    assert len(steps(mounted.add_local_dir(tmp_path, "/root/other"))) == 3, "more mounts are fine"
    copied = cove.Image.debian_slim().add_local_dir(tmp_path, "/root/src", copy=True)
    assert steps(copied.pip_install("boto3"))[1].arg("copy") is True, "copied files are a normal layer"


def test_imports_suppresses_import_errors_only_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    image = cove.Image.debian_slim()
    with image.imports():
        importlib.import_module("no_such_module_xyz")
    monkeypatch.setenv("COVE_IS_REMOTE", "1")
    with pytest.raises(ImportError), image.imports():
        importlib.import_module("no_such_module_xyz")


# -- Secret ----------------------------------------------------------------------------------------


def test_from_name_records_name_and_required_keys() -> None:
    secret = cove.Secret.from_name("shop-token", required_keys=["AUTH_TOKEN"])
    assert secret._ref == SecretRef(name="shop-token", required_keys=("AUTH_TOKEN",))
    assert repr(secret) == "cove.Secret.from_name('shop-token')"


def test_from_name_validates_the_name_and_keys() -> None:
    with pytest.raises(InvalidError, match=r"Invalid secret name 'has space'"):
        cove.Secret.from_name("has space")
    with pytest.raises(InvalidError, match=r"use \['AUTH_TOKEN'\]"):
        cove.Secret.from_name("x", required_keys="AUTH_TOKEN")


def test_from_dict_drops_none_and_hides_values() -> None:
    secret = cove.Secret.from_dict({"TOKEN": "s3cr3t-value", "UNSET": None})
    assert secret._ref.values == (("TOKEN", "s3cr3t-value"),)
    assert "s3cr3t-value" not in repr(secret) and "s3cr3t-value" not in str(secret)
    assert repr(secret) == "cove.Secret(<keys: TOKEN>)"


def test_from_dict_refuses_non_string_values_without_echoing_them() -> None:
    with pytest.raises(InvalidError, match=r"the value of 'PIN' must be a str or None, got int") as info:
        cove.Secret.from_dict({"PIN": 982451})  # type: ignore[dict-item]
    assert "982451" not in str(info.value)


def test_from_local_environ_copies_the_named_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVE_TEST_TOKEN", "abc")
    assert cove.Secret.from_local_environ(["COVE_TEST_TOKEN"])._ref.values == (("COVE_TEST_TOKEN", "abc"),)
    monkeypatch.delenv("COVE_TEST_MISSING", raising=False)
    with pytest.raises(InvalidError, match=r"COVE_TEST_MISSING not set"):
        cove.Secret.from_local_environ(["COVE_TEST_MISSING"])


def test_from_dotenv_reads_the_cwd_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("TOKEN=abc\n")
    monkeypatch.chdir(tmp_path)
    assert cove.Secret.from_dotenv()._ref.values == (("TOKEN", "abc"),)


def test_from_dotenv_walks_up_from_path_and_honours_filename(tmp_path: Path) -> None:
    (tmp_path / "prod.env").write_text("MODE=prod\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "app.py").write_text("")
    assert cove.Secret.from_dotenv(nested / "app.py", filename="prod.env")._ref.values == (("MODE", "prod"),)


def test_from_dotenv_without_a_file_is_empty_as_in_modal(tmp_path: Path) -> None:
    assert cove.Secret.from_dotenv(tmp_path, filename="absent-cove-test.env")._ref.values == ()


def test_from_dotenv_names_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidError, match=r"does not exist"):
        cove.Secret.from_dotenv(tmp_path / "missing")


def test_dotenv_syntax() -> None:
    text = (
        "# comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=yes\n"
        "SPACED = padded  \n"
        "INLINE=abc # trailing comment\n"
        "HASH=a#b\n"
        'DOUBLE="line1\\nline2 \\"q\\""\n'
        "SINGLE='raw \\n $HOME'\n"
        'MULTI="first\n'
        'second"\n'
        "EMPTY=\n"
        "BARE\n"
        "EQUALS=a=b=c\n"
    )
    assert parse_dotenv(text) == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "padded",
        "INLINE": "abc",
        "HASH": "a#b",
        "DOUBLE": 'line1\nline2 "q"',
        "SINGLE": "raw \\n $HOME",
        "MULTI": "first\nsecond",
        "EMPTY": "",
        "BARE": "",
        "EQUALS": "a=b=c",
    }


def test_dotenv_errors_name_the_line_but_not_its_content() -> None:
    with pytest.raises(InvalidError, match=r"line 2") as info:
        parse_dotenv("OK=1\nnot a key=s3cr3t-value\n")
    assert "s3cr3t-value" not in str(info.value)
    with pytest.raises(InvalidError, match=r"never closed"):
        parse_dotenv('TOKEN="s3cr3t-value\n')
