"""The options of `@app.function`, `@app.cls` and `@app.server`, validated into `FunctionSpec` fields.

Modal's names and limits: `timeout` 1 s–24 h (default 300), `scaledown_window` 2 s–20 min,
`min_containers <= max_containers`, `memory` in MiB or `(request, limit)`. The pre-1.0 spellings
(`keep_warm`, `concurrency_limit`, `container_idle_timeout`, `allow_concurrent_inputs`) are mapped to
their new names with a `DeprecationError` warning naming the replacement. Options Modal has that
change nothing here (placement, GPUs on the local backend, ...) are accepted with one warning per
option and process (`warn_ignored`), so a Modal app runs and its author knows what was dropped.
"""

from __future__ import annotations

import posixpath
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cove import config
from cove._spec import FunctionSpec, ImageSpec, SecretRef, VolumeMount, WebSpec
from cove.exception import DeprecationError, InvalidError
from cove.image import Image
from cove.secret import Secret
from cove.volume import Volume

DEFAULT_TIMEOUT_S = 300  # Modal's
MAX_TIMEOUT_S = 24 * 60 * 60
MIN_SCALEDOWN_S = 2
MAX_SCALEDOWN_S = 20 * 60
DEFAULT_SCALEDOWN_S = 60.0


def check_image(where: str, image: object) -> Image | None:
    if image is not None and not isinstance(image, Image):
        raise InvalidError(
            f"{where}(image=...) must be a cove.Image such as Image.debian_slim(), got {image!r}."
        )
    return image


def check_secrets(where: str, secrets: object) -> tuple[Secret, ...]:
    if secrets is None:
        return ()
    if isinstance(secrets, Secret):
        raise InvalidError(f"{where}(secrets=...) takes a list: use secrets=[{secrets!r}].")
    if isinstance(secrets, (str, bytes)) or not isinstance(secrets, Sequence):
        raise InvalidError(
            f"{where}(secrets=...) takes a list of cove.Secret, got {secrets!r}. "
            "Refer to a stored secret with cove.Secret.from_name('name')."
        )
    for secret in secrets:
        if not isinstance(secret, Secret):
            hint = f" Use cove.Secret.from_name({secret!r})." if isinstance(secret, str) else ""
            raise InvalidError(
                f"{where}(secrets=...) entries must be cove.Secret objects, got {secret!r}.{hint}"
            )
    return tuple(secrets)


def check_no_volumes(where: str, name: str, value: Mapping[str, object] | None) -> None:
    if value:
        raise InvalidError(
            f"{where}({name}=...) is not supported by Cove. Use a cove.Volume instead: "
            'volumes={"/data": cove.Volume.from_name("name", create_if_missing=True)}.'
        )


#: Container paths a Volume may not be mounted at (or under): the platform's own, and whole system dirs.
_RESERVED_MOUNTS = ("/cove", "/proc", "/dev", "/sys")
_SYSTEM_DIRS = ("/", "/root", "/tmp", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/var")


def check_volumes(where: str, volumes: Mapping[str, object] | None) -> tuple[VolumeMount, ...]:
    """`volumes={"/path": cove.Volume.from_name(...)}` as mounts, checked eagerly."""
    if not volumes:
        return ()
    if not isinstance(volumes, Mapping):
        raise InvalidError(f'{where}(volumes=...) takes a dict like {{"/data": vol}}, got {volumes!r}.')
    mounts: list[VolumeMount] = []
    for path, volume in volumes.items():
        if not isinstance(path, str) or not path.startswith("/"):  # type: ignore[redundant-expr,unreachable,unused-ignore]
            raise InvalidError(
                f'{where}(volumes=...): mount paths must be absolute, e.g. "/data"; got {path!r}.'
            )
        clean = posixpath.normpath(path)
        if clean in _SYSTEM_DIRS or any(clean == r or clean.startswith(r + "/") for r in _RESERVED_MOUNTS):
            raise InvalidError(
                f"{where}(volumes=...): cannot mount a Volume at {path!r}, a directory the container "
                'needs for itself. Choose a path of its own, e.g. "/data" or "/root/.cache/models".'
            )
        if not isinstance(volume, Volume):
            raise InvalidError(
                f"{where}(volumes=...): {path!r} maps to {volume!r}, not a cove.Volume. Use "
                "cove.Volume.from_name(name, create_if_missing=True)."
            )
        if volume.name is None:
            raise InvalidError(
                f"{where}(volumes=...): {path!r} maps to an ephemeral Volume, which Cove cannot mount. "
                "Use a named one: cove.Volume.from_name(name, create_if_missing=True)."
            )
        mounts.append(VolumeMount(path=clean, name=volume.name, create_if_missing=volume.create_if_missing))
    paths = [m.path for m in mounts]
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "/"):
                raise InvalidError(f"{where}(volumes=...): mount paths {a!r} and {b!r} overlap.")
    return tuple(mounts)


#: Options accepted for Modal compatibility that Cove does not act on, and what to know about each.
IGNORED_OPTIONS: dict[str, str] = {
    "gpu": "the local backend runs functions on this machine's CPUs and assigns no GPU; "
    "`cove server --backend ray` places the function on a Ray node with that GPU",
    "cloud": "functions run on the machines of this Cove server; there is no cloud to choose",
    "region": "functions run on the machines of this Cove server; there is no region to choose",
    "routing_region": "requests reach this Cove server's gateway directly",
    "nonpreemptible": "Cove never preempts containers",
    "i6pn": "there is no private network between containers",
    "ephemeral_disk": "containers write to a scratch directory on this machine's disk, with no size limit",
    "restrict_modal_access": "containers do not get a control-plane token to restrict",
    "experimental_options": "Cove has no experimental options",
}
_warned_options: set[str] = set()


class IgnoredOptionWarning(UserWarning):
    """An option Cove accepts but does not act on (warned once per option and process)."""


def warn_ignored(where: str, options: Mapping[str, object], stacklevel: int) -> None:
    """Warn once per option name about options in `IGNORED_OPTIONS` that were given a value.

    Only where the app is loaded: a container importing the module again stays quiet.
    """
    if config.env("COVE_IS_REMOTE") == "1":
        return
    for name, value in options.items():
        if value is None or value is False or value == {} or name in _warned_options:
            continue
        _warned_options.add(name)
        warnings.warn(
            IgnoredOptionWarning(
                f"{where}({name}={value!r}) is accepted for Modal compatibility but has no effect in Cove: "
                f"{IGNORED_OPTIONS[name]}. (Shown once per option.)"
            ),
            stacklevel=stacklevel + 1,
        )


def _int(where: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidError(f"{where}({name}=...) must be an integer >= {minimum}, got {value!r}.")
    return value


def _seconds(where: str, name: str, value: object, low: float, high: float, unit_hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidError(f"{where}({name}=...) must be between {unit_hint} (in seconds), got {value!r}.")
    return float(value)


def _request_limit(where: str, name: str, value: object, kind: type) -> float | None:
    """`x` or `(request, limit)`; the limit is what Cove enforces."""
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidError(f"{where}({name}=...) tuple must be (request, limit), got {value!r}.")
        request, limit = (_positive(where, name, v, kind) for v in value)
        if limit < request:
            raise InvalidError(f"{where}({name}=(request, limit)): limit {limit} is below request {request}.")
        return limit
    return _positive(where, name, value, kind)


def _positive(where: str, name: str, value: object, kind: type) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
        or value <= 0
    ):
        example = "0.5 or (0.25, 1.0)" if kind is float else "1024 or (512, 2048)"
        raise InvalidError(
            f"{where}({name}=...) must be a positive {kind.__name__} or tuple, e.g. {example}; got {value!r}."
        )
    return float(value)


def _gpu(where: str, gpu: object) -> str | None:
    if gpu is None:
        return None
    raw: list[object] = list(gpu) if isinstance(gpu, (list, tuple)) else [gpu]
    names = [n for n in raw if isinstance(n, str) and n]
    if not raw or len(names) != len(raw):
        raise InvalidError(
            f"{where}(gpu=...) must be a string such as 'A10G' or 'H100:2' (or a list of them), got {gpu!r}. "
            "GPU objects like modal.gpu.A100() were removed in Modal 1.0."
        )
    return ",".join(names)


def _legacy(where: str, old: str, old_value: Any, new: str, new_value: Any, stacklevel: int) -> Any:
    if old_value is None:
        return new_value
    if new_value is not None:
        raise InvalidError(
            f"{where}() got both {old}= and {new}=; {old} is the old name of {new}. Remove {old}=."
        )
    warnings.warn(
        DeprecationError(
            f"Deprecated on 2025-02-24: The '{old}' parameter has been renamed to '{new}'. "
            f"Cove maps {old}={old_value!r} to {new}={old_value!r}; write {new}={old_value!r} instead."
        ),
        stacklevel=stacklevel + 1,
    )
    return old_value


@dataclass(frozen=True)
class FunctionOptions:
    """Validated options shared by every FunctionSpec one decorator produces."""

    image: ImageSpec
    secrets: tuple[SecretRef, ...]
    min_containers: int
    max_containers: int | None
    buffer_containers: int
    scaledown_window_s: float
    timeout_s: float
    startup_timeout_s: float | None
    legacy_max_inputs: int | None  # from allow_concurrent_inputs=
    cpu: float | None
    memory_mib: int | None
    gpu: str | None
    block_network: bool
    serialized: bool
    has_retries: bool
    volumes: tuple[VolumeMount, ...] = ()

    def spec(
        self,
        where: str,
        *,
        tag: str,
        module_attr: str,
        method_name: str | None,
        web: WebSpec | None,
        is_generator: bool,
        max_inputs: int | None,
        target_inputs: int | None,
    ) -> FunctionSpec:
        if self.has_retries and web is not None:
            raise InvalidError(
                f"Web Functions do not support retries. Remove retries= from {where}() for {tag!r}."
            )
        if max_inputs is not None and self.legacy_max_inputs is not None:
            raise InvalidError(
                f"{tag!r} sets concurrency twice: allow_concurrent_inputs= and @cove.concurrent. "
                "Keep @cove.concurrent."
            )
        return FunctionSpec(
            tag=tag,
            module_attr=module_attr,
            method_name=method_name,
            web=web,
            image=self.image,
            secrets=self.secrets,
            min_containers=self.min_containers,
            max_containers=self.max_containers,
            buffer_containers=self.buffer_containers,
            scaledown_window_s=self.scaledown_window_s,
            timeout_s=self.timeout_s,
            startup_timeout_s=self.startup_timeout_s,
            max_inputs=max_inputs or self.legacy_max_inputs or 1,
            target_inputs=target_inputs,
            cpu=self.cpu,
            memory_mib=self.memory_mib,
            gpu=self.gpu,
            block_network=self.block_network,
            is_generator=is_generator,
            volumes=self.volumes,
        )


#: Keyword arguments of `@app.function`/`@app.cls`/`@app.server` that `parse_options` validates; the
#: decorators hand it theirs by these names (`options_given`), so each is parsed in one place.
OPTION_NAMES: frozenset[str] = frozenset(
    {
        "image", "secrets", "env", "gpu", "serialized", "network_file_systems", "volumes", "cpu",
        "memory", "min_containers", "max_containers", "buffer_containers", "scaledown_window", "proxy",
        "retries", "timeout", "startup_timeout", "block_network", "single_use_containers", "max_inputs",
        "keep_warm", "concurrency_limit", "container_idle_timeout", "allow_concurrent_inputs",
        *IGNORED_OPTIONS,
    }
)  # fmt: skip


def options_given(arguments: Mapping[str, object]) -> dict[str, Any]:
    """The option arguments among a decorator's `locals()`: what `parse_options(**...)` takes."""
    return {name: value for name, value in arguments.items() if name in OPTION_NAMES}


def parse_options(
    where: str,
    *,
    app_image: Image | None,
    app_secrets: tuple[Secret, ...],
    stacklevel: int,
    app_volumes: Mapping[str, object] = {},
    image: object = None,
    secrets: object = (),
    env: Mapping[str, str | None] | None = None,
    gpu: object = None,
    serialized: object = False,
    network_file_systems: Mapping[str, object] | None = None,
    volumes: Mapping[str, object] | None = None,
    cpu: object = None,
    memory: object = None,
    min_containers: object = None,
    max_containers: object = None,
    buffer_containers: object = None,
    scaledown_window: object = None,
    proxy: object = None,
    retries: object = None,
    timeout: object = DEFAULT_TIMEOUT_S,
    startup_timeout: object = None,
    block_network: object = False,
    single_use_containers: object = False,
    max_inputs: object = None,
    keep_warm: object = None,
    concurrency_limit: object = None,
    container_idle_timeout: object = None,
    allow_concurrent_inputs: object = None,
    **accepted: object,
) -> FunctionOptions:
    """Validate the option arguments of one `@app.function(...)`/`@app.cls(...)`/`@app.server(...)` call.

    `stacklevel` is the warnings stack level of the user's decorator line as seen from here;
    `accepted` holds the options of `IGNORED_OPTIONS` the decorator has (warned about once all
    options are valid; `gpu` is one of them too where the backend has no GPUs).
    """
    unknown = set(accepted) - set(IGNORED_OPTIONS)
    if unknown:
        raise TypeError(f"parse_options() got unexpected options: {', '.join(sorted(unknown))}")
    ignored = {
        name: gpu if name == "gpu" else accepted[name]
        for name in IGNORED_OPTIONS
        if name == "gpu" or name in accepted
    }
    min_containers = _legacy(where, "keep_warm", keep_warm, "min_containers", min_containers, stacklevel)
    max_containers = _legacy(
        where, "concurrency_limit", concurrency_limit, "max_containers", max_containers, stacklevel
    )
    scaledown_window = _legacy(
        where,
        "container_idle_timeout",
        container_idle_timeout,
        "scaledown_window",
        scaledown_window,
        stacklevel,
    )
    legacy_max_inputs: int | None = None
    if allow_concurrent_inputs is not None:
        legacy_max_inputs = _int(where, "allow_concurrent_inputs", allow_concurrent_inputs, 1)
        warnings.warn(
            DeprecationError(
                "Deprecated on 2025-04-09: The 'allow_concurrent_inputs' parameter has been replaced by the "
                f"@cove.concurrent decorator. Cove maps allow_concurrent_inputs={legacy_max_inputs} to "
                f"max_inputs={legacy_max_inputs}; use @cove.concurrent(max_inputs={legacy_max_inputs}) "
                f"below {where}() instead."
            ),
            stacklevel=stacklevel,
        )

    mounts = check_volumes(where, {**dict(app_volumes), **dict(volumes or {})})
    check_no_volumes(where, "network_file_systems", network_file_systems)
    if proxy is not None:
        raise InvalidError(
            f"{where}(proxy=...) is not supported by Cove: functions use this machine's network."
        )
    if single_use_containers:
        raise InvalidError(f"{where}(single_use_containers=True) is not supported by Cove yet; remove it.")
    if max_inputs is not None:
        raise InvalidError(
            f"{where}(max_inputs=...) (inputs per container lifetime) is not supported by Cove. "
            "For inputs handled at once, use @cove.concurrent(max_inputs=N) below the decorator."
        )

    min_n = 0 if min_containers is None else _int(where, "min_containers", min_containers, 0)
    max_n = None if max_containers is None else _int(where, "max_containers", max_containers, 1)
    if max_n is not None and min_n > max_n:
        raise InvalidError(
            f"{where}(): min_containers ({min_n}) cannot be greater than max_containers ({max_n}). "
            "Raise max_containers or lower min_containers."
        )
    buffer_n = 0 if buffer_containers is None else _int(where, "buffer_containers", buffer_containers, 0)
    scaledown_s = (
        DEFAULT_SCALEDOWN_S
        if scaledown_window is None
        else _seconds(
            where, "scaledown_window", scaledown_window, MIN_SCALEDOWN_S, MAX_SCALEDOWN_S, "2 and 1200"
        )
    )
    if timeout is None:
        raise InvalidError(
            f"{where}(timeout=None) is not allowed: give seconds from 1 to 86400 "
            f"(default {DEFAULT_TIMEOUT_S})."
        )
    timeout_s = _seconds(where, "timeout", timeout, 1, MAX_TIMEOUT_S, "1 and 86400")
    startup_s = (
        None
        if startup_timeout is None
        else _seconds(where, "startup_timeout", startup_timeout, 1, MAX_TIMEOUT_S, "1 and 86400")
    )

    if retries is None or retries == 0:
        has_retries = False
    elif isinstance(retries, bool) or (isinstance(retries, int) and not 0 <= retries <= 10):
        raise InvalidError(f"{where}(retries=...) must be an integer from 0 to 10, got {retries!r}.")
    else:
        has_retries = True

    for flag_name, flag in (("serialized", serialized), ("block_network", block_network)):
        if not isinstance(flag, bool):
            raise InvalidError(f"{where}({flag_name}=...) must be True or False, got {flag!r}.")

    chosen_image = check_image(where, image) or app_image or Image.debian_slim()
    all_secrets = [s._ref for s in (*app_secrets, *check_secrets(where, secrets))]
    if env is not None:
        all_secrets.append(Secret.from_dict(env)._ref)

    memory_limit = _request_limit(where, "memory", memory, int)
    gpu_names = _gpu(where, gpu)
    warn_ignored(where, ignored, stacklevel)
    return FunctionOptions(
        image=chosen_image._spec,
        secrets=tuple(all_secrets),
        min_containers=min_n,
        max_containers=max_n,
        buffer_containers=buffer_n,
        scaledown_window_s=scaledown_s,
        timeout_s=timeout_s,
        startup_timeout_s=startup_s,
        legacy_max_inputs=legacy_max_inputs,
        cpu=_request_limit(where, "cpu", cpu, float),
        memory_mib=None if memory_limit is None else int(memory_limit),
        gpu=gpu_names,
        block_network=bool(block_network),
        serialized=bool(serialized),
        has_retries=has_retries,
        volumes=mounts,
    )
