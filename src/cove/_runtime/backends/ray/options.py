"""A function as Ray sees it: actor options from its resources, a `runtime_env` from its image.

Pure functions of the `FunctionSpec` (files named by the recipe are read through an injected
`read`), so the mapping is tested without a cluster. What a recipe asks for that a `runtime_env`
cannot express (apt packages, shell commands, files mounted at absolute paths) is returned as notes
for the container's log: on Ray, those belong in the nodes' own image. The app's sources are not
part of it: Ray uploads directories only for a whole job, so the backend ships them itself.
"""

from __future__ import annotations

import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove._spec import FunctionSpec, ImageStep

#: Modal reserves 0.125 CPU for a function that names none; Ray schedules by the same figure.
DEFAULT_CPU = 0.125
#: The actor's own methods (endpoints, start, wait_exit, stop) may all be pending at once.
ACTOR_CONCURRENCY = 8
#: Modal's GPU names whose Ray `accelerator_type` is spelled differently (ray.util.accelerators).
_RAY_ACCELERATORS = {"A100-40GB": "A100-40G", "A100-80GB": "A100-80G"}
_PIP_DEFAULTS = ("--disable-pip-version-check", "--no-cache-dir")  # Ray's own defaults
_UV_DEFAULTS = ("--no-cache",)

Reader = Callable[[str], str]


@dataclass(frozen=True)
class RayPlan:
    """How one function's containers run on Ray: `ray.remote(...).options(**options)`, and why not more."""

    options: Mapping[str, Any]
    notes: tuple[str, ...] = field(default=())


def parse_gpu(gpu: str | None) -> tuple[float, str | None]:
    """`"H100:2"` → `(2.0, "H100")`; `"any"` → `(1.0, None)`; a fallback list uses its first choice's
    count and any accelerator type, since Ray cannot express "this type, else that one"."""
    if not gpu:
        return 0.0, None
    choices = [c.strip() for c in gpu.split(",") if c.strip()]
    name, _, count_text = choices[0].partition(":")
    count = float(count_text) if count_text else 1.0
    name = name.strip().upper().rstrip("!")
    if len(choices) > 1 or name == "ANY":
        return count, None
    return count, _RAY_ACCELERATORS.get(name, name)


def actor_options(spec: FunctionSpec) -> dict[str, Any]:
    """Resources and lifecycle of a container's actor: the pool replaces containers, Ray never restarts
    them; replicas spread over nodes (as Ray Serve spreads its replicas) so one node takes few down."""
    options: dict[str, Any] = {
        "num_cpus": spec.cpu if spec.cpu is not None else DEFAULT_CPU,
        "max_restarts": 0,
        "max_task_retries": 0,
        "max_concurrency": ACTOR_CONCURRENCY,
        "scheduling_strategy": "SPREAD",
    }
    if spec.memory_mib:
        options["memory"] = spec.memory_mib * 1024 * 1024
    count, accelerator = parse_gpu(spec.gpu)
    if count:
        options["num_gpus"] = count
        if accelerator is not None:
            options["accelerator_type"] = accelerator
    return options


def runtime_env(
    spec: FunctionSpec, read: Reader = lambda path: Path(path).read_text(), *, uv: bool = True
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The `runtime_env` of a function's container, and notes on recipe steps it leaves out.

    pip/uv packages install into a virtualenv Ray clones from the node's own environment (so Cove
    and its serving stack are there already), once per node and package list; `Image.env` becomes
    `env_vars`. Secrets are *not* put here: a runtime_env is stored in the cluster's metadata and
    shown by its dashboard, so they travel in the container's start message instead. Without `uv`
    (Ray < 2.40 has no uv plugin), uv steps install through pip.
    """
    packages: list[str] = []
    flags: list[str] = []
    use_uv = False
    env_vars: dict[str, str] = {}
    notes: list[str] = []
    for step in spec.image.steps:
        kind = step.kind
        if kind in ("pip_install", "uv_pip_install"):
            use_uv = use_uv or (uv and kind == "uv_pip_install")
            packages += step.arg("packages", ())
            for requirements in step.arg("requirements", ()):
                packages += _requirements(read(requirements))
            flags += _pip_flags(step)
        elif kind == "pip_install_from_requirements":
            packages += _requirements(read(step.arg("path")))
            flags += _pip_flags(step)
        elif kind == "pip_install_from_pyproject":
            packages += _pyproject(read(step.arg("path")), step.arg("optional_dependencies", ()))
            flags += _pip_flags(step)
        elif kind == "env":
            env_vars.update(dict(step.arg("vars", ())))
        elif kind == "add_local_python_source":
            pass  # shipped with the app's sources
        elif kind == "debian_slim":
            wanted = step.arg("python_version")
            here = f"{sys.version_info.major}.{sys.version_info.minor}"
            if wanted and str(wanted) != here:
                notes.append(
                    f"image asks for Python {wanted}; Ray runs containers on the nodes' Python "
                    f"(the server's is {here})"
                )
        elif kind != "workdir":  # the worker runs in the app's directory either way
            notes.append(
                f"image step {kind} is not applied on the Ray backend; "
                "build it into the Ray nodes' image (e.g. the KubeRay container image)"
            )
    env: dict[str, Any] = {}
    if packages:
        flags = list(dict.fromkeys(flags))  # the same index named by two steps is one flag
        if use_uv:
            env["uv"] = {"packages": packages, "uv_pip_install_options": [*_UV_DEFAULTS, *flags]}
        else:
            env["pip"] = {"packages": packages, "pip_install_options": [*_PIP_DEFAULTS, *flags]}
    if env_vars:
        env["env_vars"] = env_vars
    return env, tuple(notes)


def plan(
    spec: FunctionSpec, read: Reader = lambda path: Path(path).read_text(), *, uv: bool = True
) -> RayPlan:
    """Everything `ray.remote(ContainerActor).options(...)` needs for one function's containers."""
    env, notes = runtime_env(spec, read, uv=uv)
    options = actor_options(spec)
    if env:  # an empty one would still differ from the job's: Ray could not reuse its idle workers
        options["runtime_env"] = env
    return RayPlan(options, notes)


def _pip_flags(step: ImageStep) -> list[str]:
    flags: list[str] = []
    for key, flag in (
        ("index_url", "--index-url"),
        ("extra_index_url", "--extra-index-url"),
        ("find_links", "--find-links"),
    ):
        value = step.arg(key)
        if value:
            flags += [flag, str(value)]
    if step.arg("pre", False):
        flags.append("--pre")
    flags += shlex.split(str(step.arg("extra_options", "") or ""))
    return flags


def _requirements(text: str) -> list[str]:
    """The requirement lines of a requirements file (Ray writes them into one of its own)."""
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pyproject(text: str, extras: tuple[str, ...] | list[str]) -> list[str]:
    project = tomllib.loads(text).get("project", {})
    deps = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        deps += optional.get(extra, [])
    return [str(d) for d in deps]
