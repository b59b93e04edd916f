"""Image builds: a recipe's steps become cached layers, and a built image is a directory reused by
every function and app with the same recipe.

Cache layout (`COVE_IMAGE_CACHE`, default `COVE_HOME/images`):

    layers/<key>/              one layer: venv/ (a relocatable virtualenv), rootfs/ (images with
                               apt_install/run_commands), files/ (copy=True files), layer.json
    rootfs-<suite>-<hash>/     the Debian base root filesystem (debootstrap, minbase), built once
    logs/<key>.log             the last build log of an image (secret values replaced by ***)
    locks/                     flock files: one build of a key at a time, across processes

Layers and their keys are planned in `image_plan`; commands run and log through `image_steps`;
root filesystems come from `image_rootfs`. This module is the cache and the order of a build.

Every build step runs package code (an sdist's setup.py, a build backend, an apt maintainer script)
in a bubblewrap sandbox: `uv` for a virtualenv-only image in one that shows it the host's system
directories, the interpreter, the virtualenv being built and uv's cache, but never COVE_HOME (see
`build_sandbox`); apt_install/run_commands inside the image's root filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from cove._control import build_sandbox
from cove._control.build_sandbox import VenvBuild
from cove._control.image_plan import LAYER_FORMAT, Layer, Plan, make_plan, worker_requirements
from cove._control.image_rootfs import add_rootfs, run_in_rootfs
from cove._control.image_steps import (
    UV_ENV,
    BuildOutput,
    Emit,
    StepFailed,
    copy_files,
    copy_tree_contents,
    local_sources,
    pip_args,
    run_step,
    uv_cache_dir,
    uv_path,
)
from cove._control.secrets import SecretStore
from cove._runtime.backend import ImageLayout
from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.isolation import _host_system, probe_bwrap
from cove._runtime.backends.local.sandbox import Bind
from cove._spec import AppSpec, ImageSpec, SecretRef
from cove.config import SandboxSetting
from cove.exception import ImageBuildError

log = logging.getLogger("cove.images")


class ImageBuilder:
    """Builds images on this machine and finds built ones; one build per key at a time."""

    def __init__(
        self,
        cache: Path,
        secrets: SecretStore,
        *,
        mirror: str,
        home: Path | None = None,
        sandbox_setting: SandboxSetting = "auto",
    ) -> None:
        self.cache = cache
        self._secrets = secrets
        self._mirror = mirror
        self._home = home  # COVE_HOME: never visible to a build step
        self._sandbox_setting = sandbox_setting
        self._warned_unsandboxed = False
        self._locks: dict[str, asyncio.Lock] = {}
        for sub in ("layers", "logs", "locks"):
            (cache / sub).mkdir(parents=True, exist_ok=True)

    # -- public ------------------------------------------------------------------------------------

    def plan(
        self, spec: ImageSpec, *, force: bool = False, step_force: bool = True, root: Path | None = None
    ) -> Plan:
        return make_plan(spec, mirror=self._mirror, force=force, step_force=step_force, root=root)

    def built(self, plan: Plan) -> ImageLayout | None:
        """The image of `plan` if it is already built (and nothing forces a rebuild)."""
        if any(layer.force for layer in plan.layers):
            return None
        return self._layout(plan)

    async def build_app(
        self,
        spec: AppSpec,
        emit: Emit | None = None,
        *,
        force: bool = False,
        step_force: bool = True,
        root: Path | None = None,
    ) -> dict[ImageSpec, ImageLayout]:
        """Build every image an app's functions need (each recipe once); `root`: see `make_plan`."""
        layouts: dict[ImageSpec, ImageLayout] = {}
        for fn in spec.functions:
            if fn.image not in layouts:
                layouts[fn.image] = await self.build(
                    fn.image, emit, force=force, step_force=step_force, root=root
                )
        return layouts

    async def build(
        self,
        spec: ImageSpec,
        emit: Emit | None = None,
        *,
        force: bool = False,
        step_force: bool = True,
        root: Path | None = None,
    ) -> ImageLayout:
        """Build `spec` (only the layers not cached) and return the image; raise `ImageBuildError`."""
        emit = emit or (lambda event: None)
        plan = await asyncio.to_thread(self.plan, spec, force=force, step_force=step_force, root=root)
        ready = self.built(plan)
        if ready is not None:
            emit({"event": "image", "image": plan.key[:12], "cached": True, "layers": len(plan.layers)})
            return ready
        lock = self._locks.setdefault(plan.key, asyncio.Lock())
        async with lock, self._file_lock(plan.key):
            ready = self.built(plan)
            if ready is None:
                await self._build(plan, emit)
                ready = self._layout(plan)
                assert ready is not None
            else:
                emit({"event": "image", "image": plan.key[:12], "cached": True, "layers": len(plan.layers)})
        return ready

    # -- internals ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _file_lock(self, key: str) -> AsyncIterator[None]:
        path = self.cache / "locks" / f"{key}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _layer_dir(self, key: str) -> Path:
        return self.cache / "layers" / key

    def _layout(self, plan: Plan) -> ImageLayout | None:
        directory = self._layer_dir(plan.key)
        try:
            meta = json.loads((directory / "layer.json").read_text())
        except (OSError, ValueError):
            return None
        rootfs = directory / "rootfs"
        has_rootfs = rootfs.is_dir()
        return ImageLayout(
            key=plan.key,
            build_id=str(meta.get("build_id", "")),
            venv=str(directory / "venv"),
            interpreter=plan.interpreter.binds(has_rootfs),
            rootfs=str(rootfs) if has_rootfs else None,
            files=tuple((str(directory / "files" / rel), target) for rel, target in plan.files),
            env=plan.env,
            workdir=plan.workdir,
        )

    async def _build(self, plan: Plan, emit: Emit) -> None:
        started = time.monotonic()
        image = plan.key[:12]
        output = BuildOutput(self.cache / "logs" / f"{plan.key}.log", emit, image)
        try:
            output.event(
                {"event": "image", "cached": False, "layers": len(plan.layers), "log": str(output.path)}
            )
            # The newest layer already built (and not forced) is where this build starts.
            start = 0
            for index, layer in enumerate(plan.layers):
                if layer.force or not (self._layer_dir(layer.key) / "layer.json").is_file():
                    break
                start = index + 1
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache / "layers"))
            try:
                if start > 0:
                    await asyncio.to_thread(
                        copy_tree_contents, self._layer_dir(plan.layers[start - 1].key), work
                    )
                total = len(plan.layers)
                for index in range(start, total):
                    layer = plan.layers[index]
                    output.event({"event": "step", "index": index + 1, "total": total, "title": layer.title})
                    try:
                        await self._apply(plan, layer, work, output)
                    except StepFailed as failed:
                        raise ImageBuildError(
                            f"Image build failed at step {index + 1}/{total} ({output.mask(layer.title)}) "
                            f"with exit code {failed.code}. Last lines of its output:\n"
                            + "\n".join(f"  {line}" for line in failed.tail)
                            + f"\nFull build log: {output.path}"
                        ) from None
                    meta = {"format": LAYER_FORMAT, "key": layer.key, "build_id": os.urandom(8).hex()}
                    (work / "layer.json").write_text(json.dumps(meta))
                    await asyncio.to_thread(self._publish_layer, work, layer.key, index == total - 1)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            seconds = time.monotonic() - started
            output.event({"event": "built", "seconds": round(seconds, 2)})
            log.info("event=image_built image=%s layers=%d seconds=%.2f", plan.key, len(plan.layers), seconds)
        finally:
            output.close()

    def _publish_layer(self, work: Path, key: str, last: bool) -> None:
        """Make `work` (as it is now) the layer `key`: the last one moves there, earlier ones are
        copied (the build goes on in `work`). A forced rebuild replaces the old directory; running
        containers keep the one they were started on."""
        target = self._layer_dir(key)
        if last:
            staging = work
        else:
            staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.cache / "layers"))
            copy_tree_contents(work, staging)
        if target.exists():
            trash = target.with_name(f".trash-{key}-{os.urandom(4).hex()}")
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staging, target)

    async def _apply(self, plan: Plan, layer: Layer, work: Path, output: BuildOutput) -> None:
        step = layer.step
        if step is None:
            await self._base(plan, work, output)
            return
        env = dict(layer.env)
        names = tuple(step.arg("secrets", ()))
        if names:
            secret_env = self._secrets.resolve([SecretRef(name=n) for n in names])
            output.hide(secret_env.values())
            env.update(secret_env)
        env.update(dict(step.arg("env", ())))
        if layer.needs_rootfs and not (work / "rootfs").is_dir():
            await add_rootfs(
                self.cache,
                plan,
                work,
                output,
                mirror=self._mirror,
                file_lock=self._file_lock,
                host_env=self._host_env(),
            )
        kind = step.kind
        if kind.startswith("add_local"):
            await asyncio.to_thread(copy_files, step, work / "files")
            return
        if kind == "apt_install":
            packages = " ".join(shlex.quote(p) for p in step.arg("packages", ()))
            install = f"apt-get install -y -q {packages}"
            script = f"{install} || (apt-get update -q && {install})"
            await self._in_rootfs(layer, plan, work, output, ["/bin/sh", "-c", script], env, workdir="/")
            return
        if kind == "run_commands":
            for command in step.arg("commands", ()):
                await self._in_rootfs(
                    layer, plan, work, output, ["/bin/sh", "-c", command], env, workdir=layer.workdir or "/"
                )
            return
        # pip_install, uv_pip_install, pip_install_from_requirements, pip_install_from_pyproject
        to_install: tuple[str, ...] = layer.packages or tuple(step.arg("packages", ()))
        requirements: tuple[str, ...] = tuple(step.arg("requirements", ()))
        if kind == "pip_install_from_requirements":
            requirements = (str(step.arg("path")),)
        if not to_install and not requirements:
            output.line("(nothing to install)")
            return
        args = pip_args(step, to_install, requirements)
        await self._pip(plan, layer, work, output, args, env, requirements)

    async def _base(self, plan: Plan, work: Path, output: BuildOutput) -> None:
        venv = Path(os.path.realpath(work / "venv"))
        venv.mkdir(exist_ok=True)  # bound into the build sandbox, so it exists before uv fills it
        await self._uv_in_venv(
            ["venv", "--relocatable", "--seed", "--python", plan.interpreter.executable, str(venv)],
            plan,
            venv,
            output,
            {},
        )
        install = ["pip", "install", "--python", f"{venv}/bin/python", *worker_requirements()]
        await self._uv_in_venv(install, plan, venv, output, {})

    def _host_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVE_")}
        env.update(UV_ENV)
        env["UV_CACHE_DIR"] = uv_cache_dir()
        env.update(extra or {})
        return env

    async def _pip(
        self,
        plan: Plan,
        layer: Layer,
        work: Path,
        output: BuildOutput,
        args: list[str],
        env: dict[str, str],
        requirements: tuple[str, ...],
    ) -> None:
        if not (work / "rootfs").is_dir():
            venv = Path(os.path.realpath(work / "venv"))
            reads = [
                *build_sandbox.requirement_reads(requirements, self._cove_home()),
                *local_sources(layer.step),
            ]
            await self._uv_in_venv(
                ["pip", "install", "--python", f"{venv}/bin/python", *args], plan, venv, output, env, reads
            )
            return
        # After apt_install/run_commands, install inside the root filesystem, so builds from source
        # find the headers and libraries those steps installed.
        cache = uv_cache_dir()
        Path(cache).mkdir(parents=True, exist_ok=True)
        binds = [Bind(uv_path(), "/cove/bin/uv"), Bind(cache, cache, writable=True)]
        reads = build_sandbox.requirement_reads(requirements, self._cove_home())
        binds += [Bind(path, path) for path in reads]
        command = ["/cove/bin/uv", "pip", "install", "--python", f"{sandbox.VENV}/bin/python", *args]
        env = {**env, **UV_ENV, "UV_CACHE_DIR": cache}
        await self._in_rootfs(layer, plan, work, output, command, env, workdir="/", extra=binds)

    def _cove_home(self) -> str | None:
        return str(self._home) if self._home is not None else None

    def _build_bwrap(self) -> str | None:
        """bwrap for build steps, or None (COVE_SANDBOX=off, or unusable here: warned once)."""
        bwrap: str | None = None
        reason = "COVE_SANDBOX=off"
        if self._sandbox_setting != "off":
            bwrap, reason = probe_bwrap()
        if bwrap is None and not self._warned_unsandboxed:
            self._warned_unsandboxed = True
            log.warning(
                "event=build_unsandboxed reason=%r: image builds run uv, and the build code of the "
                "packages they install, as the server's user on the host, without a sandbox",
                reason,
            )
        return bwrap

    async def _uv_in_venv(
        self,
        args: list[str],
        plan: Plan,
        venv: Path,
        output: BuildOutput,
        env: Mapping[str, str],
        reads: Iterable[str] = (),
    ) -> None:
        """Run `uv *args` on the virtualenv `venv` of a venv-only image. uv runs package code (an
        sdist's setup.py, a PEP 517 backend), so it runs in a bubblewrap sandbox (see
        `build_sandbox`), unless none is available."""
        bwrap = self._build_bwrap()
        if bwrap is None:
            await run_step([uv_path(), *args], output, env=self._host_env(env))
            return
        cache = os.path.realpath(uv_cache_dir())
        Path(cache).mkdir(parents=True, exist_ok=True)
        user_config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "uv"
        build = VenvBuild(
            command=(os.path.realpath(uv_path()), *args),
            venv=str(venv),
            cache=cache,
            interpreter=plan.interpreter.binds(False),
            reads=tuple(reads),
            env=tuple({**UV_ENV, **env}.items()),
            cove_home=self._cove_home(),
            user_config=str(user_config) if user_config.is_dir() else None,
        )
        exists = build_sandbox.optional_paths(build, os.environ)
        argv = build_sandbox.venv_build_argv(
            build, bwrap=bwrap, host=_host_system(), environ=os.environ, exists=exists
        )
        await run_step(argv, output, env=self._host_env())

    async def _in_rootfs(
        self,
        layer: Layer,
        plan: Plan,
        work: Path,
        output: BuildOutput,
        command: list[str],
        env: Mapping[str, str],
        *,
        workdir: str,
        extra: list[Bind] | None = None,
    ) -> None:
        await run_in_rootfs(
            plan, layer, work, output, command, env, workdir=workdir, host_env=self._host_env(), extra=extra
        )
