"""Root filesystems of images with apt_install/run_commands: Debian's, debootstrapped once per
mirror and copied into each such image, and the build steps that run inside one (bubblewrap)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from cove._control.image_plan import ROOTFS_INCLUDE, SUITE, Layer, Plan
from cove._control.image_steps import BuildOutput, StepFailed, copy_tree, run_step
from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.isolation import probe_bwrap
from cove._runtime.backends.local.sandbox import Bind, BuildNeeds
from cove.exception import ImageBuildError

#: A lock held across processes while a root filesystem is made, by name.
FileLock = Callable[[str], AbstractAsyncContextManager[None]]


async def run_in_rootfs(
    plan: Plan,
    layer: Layer,
    work: Path,
    output: BuildOutput,
    command: list[str],
    env: Mapping[str, str],
    *,
    workdir: str,
    host_env: Mapping[str, str],
    extra: list[Bind] | None = None,
) -> None:
    """Run one step's `command` inside the image's root filesystem under `work`, its virtualenv and
    copied files bound where containers see them."""
    bwrap, reason = probe_bwrap()
    if bwrap is None:
        raise ImageBuildError(
            f"Image step {layer.title!r} runs inside the image's root filesystem, which needs "
            f"bubblewrap: {reason}."
        )
    rootfs = work / "rootfs"
    (rootfs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    binds = [Bind(path, path) for path in plan.interpreter.binds(True)]
    binds.append(Bind(str(work / "venv"), sandbox.VENV, writable=True))
    binds += [
        Bind(str(work / "files" / rel), target)
        for rel, target in plan.files
        if (work / "files" / rel).exists()
    ]
    binds += extra or []
    argv = sandbox.build_argv(
        BuildNeeds(
            command=tuple(command),
            rootfs=str(rootfs),
            binds=tuple(binds),
            workdir=workdir,
            env=tuple(env.items()),
            host_is_root=os.geteuid() == 0,
        ),
        bwrap=bwrap,
    )
    await run_step(argv, output, env=host_env)


async def add_rootfs(
    cache: Path,
    plan: Plan,
    work: Path,
    output: BuildOutput,
    *,
    mirror: str,
    file_lock: FileLock,
    host_env: Mapping[str, str],
) -> None:
    """Give the image under `work` a copy of the Debian root filesystem, made first if need be."""
    assert plan.rootfs_key is not None
    base = cache / f"rootfs-{SUITE}-{plan.rootfs_key[:16]}"
    if not (base / ".cove-complete").is_file():
        async with file_lock(f"rootfs-{plan.rootfs_key}"):
            if not (base / ".cove-complete").is_file():
                await debootstrap(base, output, mirror=mirror, host_env=host_env)
    output.line(f"copying the Debian {SUITE} root filesystem")
    await asyncio.to_thread(copy_tree, base, work / "rootfs")
    (work / "rootfs" / ".cove-complete").unlink(missing_ok=True)


async def debootstrap(base: Path, output: BuildOutput, *, mirror: str, host_env: Mapping[str, str]) -> None:
    """Make Debian's minbase root filesystem at `base` (as root), with what Cove binds into it."""
    tool = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None
    )
    if tool is None:
        raise ImageBuildError(
            "apt_install/run_commands need a Debian root filesystem, built with debootstrap, which is "
            "not installed. Install it with `apt-get install debootstrap` (as root) and deploy again."
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            "apt_install/run_commands need a Debian root filesystem, and debootstrap must run as root. "
            "Run the Cove server as root, or use only pip_install/uv_pip_install steps."
        )
    output.event({"event": "step", "index": 0, "total": 0, "title": f"debootstrap {SUITE} (once)"})
    staging = base.with_name(base.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        await run_step(
            [tool, "--variant=minbase", f"--include={','.join(ROOTFS_INCLUDE)}", SUITE, str(staging), mirror],
            output,
            env=host_env,
        )
    except StepFailed as failed:
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageBuildError(
            f"debootstrap of Debian {SUITE} from {mirror} failed with exit code {failed.code}. "
            "Last lines:\n" + "\n".join(f"  {line}" for line in failed.tail)
        ) from None
    for path in ("cove/venv", "cove/sdk/cove", "cove/run", "cove/bin"):
        (staging / path).mkdir(parents=True, exist_ok=True)
    (staging / "cove/bin/uv").touch()
    with contextlib.suppress(OSError):
        shutil.rmtree(base)
    (staging / ".cove-complete").write_text(SUITE)
    os.rename(staging, base)
