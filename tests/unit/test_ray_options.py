"""How a function's resources and image become a Ray actor's options and runtime_env."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import cove
from cove._runtime.backends.ray.options import DEFAULT_CPU, actor_options, parse_gpu, plan, runtime_env
from cove._spec import FunctionSpec, ImageSpec


def spec_with(image: cove.Image | None = None, **fields: object) -> FunctionSpec:
    spec = FunctionSpec(tag="f", module_attr="f")
    if image is not None:
        spec = dataclasses.replace(spec, image=image._spec)
    return dataclasses.replace(spec, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (None, (0.0, None)),
        ("T4", (1.0, "T4")),
        ("h100:2", (2.0, "H100")),
        ("A100-80GB", (1.0, "A100-80G")),
        ("A100-40GB:4", (4.0, "A100-40G")),
        ("any", (1.0, None)),
        ("any:2", (2.0, None)),
        ("H100!", (1.0, "H100")),
        ("H100,A100-80GB", (1.0, None)),
        ("L4:2,T4", (2.0, None)),
    ],
)
def test_gpu_strings_become_a_count_and_an_accelerator_type(
    gpu: str | None, expected: tuple[float, str | None]
) -> None:
    assert parse_gpu(gpu) == expected


def test_resources_become_actor_options_and_ray_never_restarts_a_container() -> None:
    options = actor_options(spec_with(cpu=1.5, memory_mib=512, gpu="A10G:2"))
    assert options["num_cpus"] == 1.5
    assert options["memory"] == 512 * 1024 * 1024
    assert (options["num_gpus"], options["accelerator_type"]) == (2.0, "A10G")
    assert (options["max_restarts"], options["max_task_retries"]) == (0, 0)
    assert options["scheduling_strategy"] == "SPREAD"


def test_a_function_without_resources_asks_for_modals_default_cpu_and_nothing_else() -> None:
    options = actor_options(spec_with())
    assert options["num_cpus"] == DEFAULT_CPU
    assert "memory" not in options and "num_gpus" not in options and "accelerator_type" not in options


def test_an_imageless_function_gets_no_runtime_env_so_ray_can_reuse_its_idle_workers() -> None:
    assert "runtime_env" not in plan(spec_with()).options
    assert "runtime_env" not in plan(spec_with(cove.Image.debian_slim())).options


def test_pip_packages_and_their_index_options_go_to_rays_pip_plugin() -> None:
    image = (
        cove.Image.debian_slim()
        .pip_install("flask==3.0.0", "boto3", index_url="https://pypi.example/simple", pre=True)
        .pip_install("numpy", extra_options="--no-deps")
    )
    env, notes = runtime_env(spec_with(image))
    assert env["pip"]["packages"] == ["flask==3.0.0", "boto3", "numpy"]
    assert env["pip"]["pip_install_options"] == [
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--index-url",
        "https://pypi.example/simple",
        "--pre",
        "--no-deps",
    ]
    assert notes == ()


def test_any_uv_step_puts_every_package_through_rays_uv_plugin() -> None:
    image = cove.Image.debian_slim().pip_install("flask").uv_pip_install("httpx")
    env, _ = runtime_env(spec_with(image))
    assert "pip" not in env
    assert env["uv"] == {"packages": ["flask", "httpx"], "uv_pip_install_options": ["--no-cache"]}


def test_without_rays_uv_plugin_uv_steps_install_through_pip() -> None:
    image = cove.Image.debian_slim().uv_pip_install("httpx")
    env, _ = runtime_env(spec_with(image), uv=False)
    assert "uv" not in env
    assert env["pip"]["packages"] == ["httpx"]


def test_requirements_and_pyproject_files_are_read_on_the_server() -> None:
    files = {
        "/app/requirements.txt": "# pinned\nrequests==2.31.0  # http\n\nrich\n",
        "/app/pyproject.toml": '[project]\ndependencies = ["click>=8"]\n'
        '[project.optional-dependencies]\nfast = ["uvloop"]\nslow = ["never"]\n',
    }
    image = (
        cove.Image.debian_slim()
        .pip_install_from_requirements("/app/requirements.txt")
        .pip_install_from_pyproject("/app/pyproject.toml", optional_dependencies=["fast"])
    )
    env, _ = runtime_env(spec_with(image), read=files.__getitem__)
    assert env["pip"]["packages"] == ["requests==2.31.0", "rich", "click>=8", "uvloop"]


def test_image_env_becomes_env_vars_but_secrets_stay_out_of_the_runtime_env() -> None:
    image = cove.Image.debian_slim().env({"STAGE": "prod"}).env({"LEVEL": "2"})
    spec = spec_with(image, secrets=(cove.Secret.from_dict({"TOKEN": "s3cret"})._ref,))
    env, _ = runtime_env(spec)
    assert env == {"env_vars": {"STAGE": "prod", "LEVEL": "2"}}
    assert "s3cret" not in repr(plan(spec).options)


def test_steps_a_runtime_env_cannot_express_become_notes_for_the_logs() -> None:
    other = "3.10" if sys.version_info[:2] != (3, 10) else "3.12"
    image = (
        cove.Image.debian_slim(python_version=other)
        .apt_install("ffmpeg")
        .run_commands("echo hi")
        .workdir("/srv")
        .add_local_file(__file__, "/srv/data.py")
    )
    env, notes = runtime_env(spec_with(image))
    assert env == {}
    assert any(f"Python {other}" in note for note in notes)
    assert [note.split()[2] for note in notes if note.startswith("image step")] == [
        "apt_install",
        "run_commands",
        "add_local_file",
    ]


def test_the_recipe_spec_survives_a_json_round_trip_unchanged() -> None:
    """Specs restored from the store carry lists where fresh ones carry tuples."""
    from cove._spec import function_spec_from_dict, spec_to_dict

    image = cove.Image.debian_slim().pip_install("flask").env({"A": "1"})
    spec = spec_with(image)
    restored = function_spec_from_dict(spec_to_dict(spec))
    assert runtime_env(restored) == runtime_env(spec)
    assert isinstance(restored.image, ImageSpec)
