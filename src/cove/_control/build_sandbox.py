"""The sandbox of a virtualenv-only image's build step: bwrap's argv for one `uv` command.

`uv` runs package code while it installs (an sdist's setup.py, a PEP 517 build backend), chosen by
whoever deploys. So it runs under bubblewrap and sees, at their host paths (the virtualenv is built
exactly as without the sandbox):

    /usr, /bin, /lib*, allow-listed /etc   read-only (the host's system, as containers see it)
    the base interpreter, uv               read-only
    the files the step names               read-only (requirements files' directories, local indexes)
    the virtualenv being built             writable
    uv's cache                             writable, and shared by every build: a build can write
                                           wheels a later build of another image reuses (accepted,
                                           as with any shared pip cache; it is what keeps builds fast)
    /tmp, HOME (/root)                     private tmpfs; uv's user settings bound back read-only
    COVE_HOME                              never: an empty tmpfs hides it even where a bound
                                           directory holds it; binds inside it (the virtualenv, a
                                           bundle's requirements) are made after it

in new user, PID, IPC and UTS namespaces, every capability dropped, with the host's network (the
package index), and an environment of uv's settings, proxy and TLS variables and the step's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.sandbox import Bind, HostSystem

#: What a sandboxed uv keeps of the server's environment besides UV_*: proxy and TLS settings.
#: Everything else (tokens, COVE_* settings, ...) never reaches a package's build code.
KEPT_ENV = frozenset(
    {"http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}
    | {"ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"}
)


@dataclass(frozen=True)
class VenvBuild:
    """One uv command on a virtualenv-only image, and what it may see (host paths, absolute)."""

    command: tuple[str, ...]  # command[0] is uv, bound read-only at its path
    venv: str
    cache: str
    interpreter: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # the step's: the image's env, build secrets, uv settings
    cove_home: str | None = None
    user_config: str | None = None  # the server user's uv settings directory, if it has one


def under(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or inside it (both normalized absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def paths_in(value: str) -> list[str]:
    """The local paths (absolute, or file:// URLs) in a setting's space- or comma-separated value."""
    words = [word.removeprefix("file://") for word in value.replace(",", " ").split()]
    return [word for word in words if word.startswith("/")]


def requirement_reads(requirements: Iterable[str], cove_home: str | None) -> list[str]:
    """What a step reads its requirements files from: their directories (for the files they
    include), or the file alone where its directory holds COVE_HOME (`cove serve` of a file in the
    server user's home)."""
    found = []
    for requirement in requirements:
        directory = os.path.dirname(requirement)
        hides = cove_home is not None and under(os.path.realpath(cove_home), os.path.realpath(directory))
        found.append(requirement if hides else directory)
    return found


def build_env(build: VenvBuild, environ: Mapping[str, str]) -> dict[str, str]:
    """The step's whole environment: a fixed base, the server's UV_*/proxy/TLS settings, the step's."""
    env = {"PATH": sandbox.DEFAULT_PATH, "HOME": sandbox.HOME, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    env |= {k: v for k, v in environ.items() if k.startswith("UV_") or k in KEPT_ENV}
    env |= {"UV_CACHE_DIR": build.cache, **dict(build.env)}
    return env


def venv_build_argv(
    build: VenvBuild,
    *,
    bwrap: str,
    host: HostSystem,
    environ: Mapping[str, str],
    exists: frozenset[str] = frozenset(),
) -> list[str]:
    """The argv running `build.command` in its sandbox (see the module docstring). `environ` is the
    server's environment; `exists` the optional paths (reads, TLS files, local indexes) found on disk."""
    if not build.command:
        raise ValueError("a build step needs a command")
    env = build_env(build, environ)
    argv = [bwrap]
    system = [Bind(path, path) for path in (*host.dirs, *host.etc)]
    for link, target in host.links:
        argv += ["--symlink", target, link]
    argv += _bind_args(system)
    argv += ["--ro-bind-try", "/etc/uv", "/etc/uv"]  # uv's system-wide settings (index, ...)
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", sandbox.HOME]
    binds = [Bind(path, path) for path in build.interpreter]
    binds.append(Bind(build.command[0], build.command[0]))
    if build.user_config is not None:
        binds.append(Bind(build.user_config, f"{sandbox.HOME}/.config/uv"))
    binds += [Bind(path, path) for path in _optional(build, env) if path in exists]
    binds.append(Bind(build.cache, build.cache, writable=True))
    binds.append(Bind(build.venv, build.venv, writable=True))
    if build.cove_home is None:
        argv += _bind_args(binds)
    else:
        # COVE_HOME is hidden (an empty tmpfs) wherever a bind shows it, after every bind that
        # holds it and before the binds inside it (the virtualenv, a bundle's files).
        home = os.path.realpath(build.cove_home)
        real_sources = {b: os.path.realpath(b.source) for b in binds}
        inside = [b for b in binds if under(real_sources[b], home) and real_sources[b] != home]
        argv += _bind_args(b for b in binds if b not in inside)
        masks = {build.cove_home: None, home: None}
        for bind in [*system, *binds]:
            real = os.path.realpath(bind.source)
            if under(home, real):
                masks[os.path.normpath(os.path.join(bind.target, os.path.relpath(home, real)))] = None
        for mask in masks:
            argv += ["--tmpfs", mask]
        argv += _bind_args(inside)
    argv += ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--share-net", "--hostname", "cove-build", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--chdir", "/tmp", "--clearenv"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return [*argv, "--", *build.command]


def _bind_args(binds: Iterable[Bind]) -> list[str]:
    argv: list[str] = []
    for bind in binds:
        argv += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
    return argv


def optional_paths(build: VenvBuild, environ: Mapping[str, str]) -> frozenset[str]:
    """The optional paths `venv_build_argv` may bind that exist on this machine."""
    return frozenset(p for p in _optional(build, build_env(build, environ)) if os.path.exists(p))


def _optional(build: VenvBuild, env: Mapping[str, str]) -> list[str]:
    """Paths bound read-only if they exist: TLS roots, the step's reads, and the operator's local
    indexes (UV_FIND_LINKS=/srv/wheels, file:// URLs), so they stay usable."""
    found = [env.get("SSL_CERT_FILE", ""), env.get("SSL_CERT_DIR", ""), *build.reads]
    for key, value in env.items():
        if key.startswith("UV_") and key != "UV_CACHE_DIR":
            found += paths_in(value)
    return [path for path in dict.fromkeys(found) if os.path.isabs(path)]
