"""Apps and their versions: turning a manifest into pools, routes and URLs, and swapping them in."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cove._bundle import resolve_in_bundle
from cove._control.images import ImageBuilder
from cove._control.logs import LogHub
from cove._control.records import AppKind, AppRecord, AppState, Endpoint, Source, Version, validate_app_name
from cove._control.secrets import SecretStore
from cove._control.store import Store, StoredVersion
from cove._gateway.routing import Route, host_key
from cove._labels import endpoint_host, endpoint_url
from cove._runtime.backend import (
    CONTAINER_HOME,
    Backend,
    ContainerHandle,
    ContainerRequest,
    ImageLayout,
    Stream,
)
from cove._runtime.lease import ContainerInfo
from cove._runtime.observer import PoolObserver
from cove._runtime.pool import FunctionPool
from cove._spec import AppSpec, FunctionSpec, ImageSpec
from cove.config import Settings
from cove.exception import ExecutionError, InvalidError, NotFoundError

log = logging.getLogger("cove.apps")

#: How long a new version's first containers may take before traffic moves anyway.
_WARM_TIMEOUT_S = 60.0
#: Lines of a failed container's stderr shown by a deploy it failed.
_FAILURE_LINES = 20
#: How long a failed deploy waits for the failed container's last stderr lines.
_OUTPUT_GRACE_S = 2.0


class StartupFailedError(ExecutionError):
    """A new version's containers failed to start, so it did not go live."""


class AppRegistry:
    """Owns every app's versions and pools, and keeps the gateway's routing table in step."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        secrets: SecretStore,
        logs: LogHub,
        publish_routes: Callable[[dict[str, Route]], None],
        gateway_port: Callable[[], int],
        store: Store,
        images: ImageBuilder | None = None,
        api_socket: Callable[[AppKind, str], str] | None = None,
        api_forget: Callable[[AppKind, str], Awaitable[None]] | None = None,
        volume_path: Callable[[str, bool], Path] | None = None,
        pool_observer: PoolObserver | None = None,
        bundle_of: Callable[[str], Path | None] = lambda source_dir: None,
    ) -> None:
        """`api_socket(kind, name)` gives the host path of an app's scoped control socket for its
        containers (`cove._control.container_api`); `api_forget` is called when the app stops;
        `pool_observer` is registered with every function pool; `bundle_of(source_dir)` is the
        bundle store's answer to which uploaded bundle a version runs from (`BundleStore.root_of`)."""
        self._pool_observer = pool_observer
        self._bundle_of = bundle_of
        self._api_socket = api_socket
        self._api_forget = api_forget
        self._store = store
        self._volume_path = volume_path
        self._images = images
        self._settings = settings
        self._backend = backend
        self._secrets = secrets
        self._logs = logs
        self._publish = publish_routes
        self._gateway_port = gateway_port
        # Keyed by (kind, name): `cove serve shop.py` runs beside a deployed `shop`, as on Modal.
        self._apps: dict[tuple[AppKind, str], AppRecord] = {}
        self._lock = asyncio.Lock()
        # Old versions draining after a redeploy, with their app (`cove app stop` ends them too).
        self._retiring: dict[asyncio.Task[None], tuple[AppRecord, Version]] = {}

    def get(self, name: str, kind: AppKind | None = None) -> AppRecord:
        """The app called `name`; without `kind`, the deployed one if there is one."""
        kinds: tuple[AppKind, ...] = (kind,) if kind else ("deployed", "ephemeral")
        for k in kinds:
            record = self._apps.get((k, name))
            if record is not None:
                return record
        raise NotFoundError(f"App {name!r} not found. See `cove app list`.")

    def apps(self) -> list[AppRecord]:
        return list(self._apps.values())

    async def publish(
        self,
        name: str,
        spec: AppSpec,
        source: Source,
        *,
        kind: AppKind,
        session: str | None = None,
        tag: str = "",
        rollback_of: int | None = None,
        restore_version: int | None = None,
    ) -> AppRecord:
        """Create the next version of `name` and move traffic to it; the old version drains.

        Everything that can fail (names, secrets, mounts, image builds, labels, a web function's
        first container) is checked before anything changes, and the store records the version
        and makes it current in one transaction just before the routes swap: a bad manifest, a
        failing build, code that fails at import, a full disk or a crash leaves the serving
        version untouched.
        `restore_version` serves a version already in the store (server restart) instead of
        recording a new one.
        """
        validate_app_name(name)
        web_specs = [f for f in spec.functions if f.web is not None]
        envs = {f.tag: self._secrets.resolve(f.secrets) for f in spec.functions}
        requests = {f.tag: self._request(name, kind, f, source, envs[f.tag]) for f in spec.functions}
        layouts: dict[ImageSpec, ImageLayout] = {}
        if self._images is not None:
            # Built before the lock: a long build must not hold up other apps. Images the CLI had
            # built already (POST /v1/images/build) are found in the cache at once.
            layouts = await self._images.build_app(spec, step_force=False, root=self.bundle_root(source))
            requests = {
                tag: dataclasses.replace(r, image=layouts[r.function.image]) for tag, r in requests.items()
            }
        dev_suffix = self._settings.dev_suffix if kind == "ephemeral" else None
        async with self._lock:
            record = self._apps.get((kind, name))
            created = record is None
            if record is None:
                record = self._apps[(kind, name)] = AppRecord(name=name, kind=kind)
            started = time.time()
            pools: dict[str, FunctionPool] = {}
            version: Version | None = None
            try:
                endpoints = tuple(self._endpoint(name, f, dev_suffix) for f in web_specs)
                self._check_conflicts(kind, name, endpoints)
                pools = {
                    f.tag: FunctionPool(
                        f,
                        self._launcher(record.log_key, requests[f.tag]),
                        max_queue=self._settings.queue_limit,
                        app_name=name,
                        observer=self._pool_observer,
                    )
                    for f in spec.functions
                }
                number = restore_version or self._store.next_version(kind, name)
                version = Version(number, spec, source, endpoints, pools, requests=tuple(requests.values()))
                for request in version.requests:
                    self._backend.prepare(request)
                old = record.current if record.state is AppState.RUNNING else None
                # Zero downtime: functions that have containers now get warm ones in the new version
                # before traffic moves to it. A deploy also proves that each web function can start
                # (one container each, which then serves): a version whose code fails at import
                # never goes live. (`cove serve` shows such failures in its log stream instead.)
                deploying = kind == "deployed" and restore_version is None
                for fn_tag, pool in pools.items():
                    was_busy = (
                        old is not None and fn_tag in old.pools and old.pools[fn_tag].container_count > 0
                    )
                    probe = deploying and pool.spec.web is not None
                    pool.start(warm=1 if was_busy or probe else 0)
                await asyncio.gather(*(p.wait_started(_WARM_TIMEOUT_S) for p in pools.values()))
                await asyncio.sleep(0)  # let each pool record how its containers' starts ended
                failed = [p for p in pools.values() if p.spec.web is not None and p.startup_failure]
                if deploying and failed:
                    # One more start each: code that fails at import fails again the same way, but a
                    # start the platform lost (a sandbox that died while starting under load) must not
                    # fail a good deploy.
                    for pool in failed:
                        pool.start_another()
                    await asyncio.gather(*(p.wait_started(_WARM_TIMEOUT_S) for p in failed))
                    await asyncio.sleep(0)
                if deploying:
                    await self._check_started(record, version, old, started)
                if restore_version is None:
                    # One transaction: after a crash the store names the old or the new version.
                    self._store.add_version(
                        kind,
                        name,
                        spec,
                        source.module_file,
                        source.source_dir,
                        tag=tag,
                        deployed_by=getpass.getuser(),
                        rollback_of=rollback_of,
                        number=number,
                    )
            except BaseException:
                await asyncio.gather(*(p.close() for p in pools.values()), return_exceptions=True)
                if version is not None:
                    self._release(version)
                if created:
                    self._apps.pop((kind, name), None)
                raise
            record.versions = number
            # "Created at" is the first publish, also for a record rebuilt after a server restart.
            record.created_at = self._store.created_at(kind, name) or record.created_at
            old = record.current
            record.current = version
            record.state = AppState.RUNNING
            if session != record.session:
                record.session = session
                record.session_changed.set()
                record.session_changed = asyncio.Event()
            self._publish(self.routes())
            log.info(
                "app=%s event=published version=%d kind=%s functions=%d",
                name,
                version.number,
                kind,
                len(pools),
            )
            if old is not None:
                self._retire(record, old)
        return record

    async def _check_started(
        self, record: AppRecord, version: Version, old: Version | None, since: float
    ) -> None:
        """Raise if a web function of `version` failed to start a container (nothing went live)."""
        for tag, pool in version.pools.items():
            reason = pool.startup_failure
            if reason is None or pool.spec.web is None:
                continue

            def output(tag: str = tag) -> list[str]:
                lines = self._logs.recent(record.log_key)
                return [r.line for r in lines if r.ts >= since and r.function == tag and r.stream == "stderr"]

            # The failure can overtake the container's last stderr lines (another pipe): give them a
            # moment to arrive, on this failure path only.
            deadline = time.monotonic() + _OUTPUT_GRACE_S
            while not any(line.startswith(reason.split(":")[0]) for line in output()):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            shown = output()[-_FAILURE_LINES:]
            kept = f"v{old.number} keeps serving." if old is not None else "Nothing was deployed."
            raise StartupFailedError(
                f"v{version.number} of app {record.name!r} did not go live: function {tag} failed to "
                f"start: {reason}. {kept} Fix the error and deploy again"
                + (". Its output:\n" + "\n".join(f"  {line}" for line in shown) if shown else ".")
            )

    async def stop(self, name: str, kind: AppKind | None = None) -> AppRecord:
        async with self._lock:
            record = self.get(name, kind)
            if record.state is AppState.STOPPED:
                return record
            self._store.set_stopped(record.kind, name)  # first: if it fails, nothing changed
            record.state = AppState.STOPPED
            record.session = None
            record.session_changed.set()
            record.session_changed = asyncio.Event()
            self._publish(self.routes())
            current = record.current
        # Stopping ends every connection at once, old versions' too: WebSockets close with 1001.
        draining = [v for r, v in self._retiring.values() if r is record]
        await asyncio.gather(*(p.close() for v in draining for p in v.pools.values()), return_exceptions=True)
        if current is not None:
            await asyncio.gather(*(p.close() for p in current.pools.values()))
            self._release(current)
        if self._api_forget is not None:
            await self._api_forget(record.kind, name)
        self._logs.write(record.log_key, "-", "-", "system", f"app {name} stopped")
        self._logs.end(record.log_key)
        log.info("app=%s event=stopped", name)
        return record

    async def restore(self) -> None:
        """After a server (re)start: serve every deployed app again; ephemeral apps stay stopped."""
        for name in self._store.stop_all("ephemeral"):
            log.info("app=%s kind=ephemeral event=stopped reason=server_restarted", name)
        for stored in self._store.apps():
            if stored.current_version == 0:
                continue
            version = self._store.version(stored.kind, stored.name, stored.current_version)
            source = Source(version.module_file, version.source_dir)
            if stored.state == "running":
                try:
                    await self.publish(
                        stored.name, version.spec, source, kind=stored.kind, restore_version=version.number
                    )
                except Exception as exc:  # one broken app must not keep the others down
                    log.error("app=%s event=restore_failed error=%r", stored.name, exc)
                continue
            # A stopped app keeps its hosts, answering "app is stopped" instead of "no endpoint".
            dev_suffix = self._settings.dev_suffix if stored.kind == "ephemeral" else None
            web = [f for f in version.spec.functions if f.web is not None]
            endpoints = tuple(self._endpoint(stored.name, f, dev_suffix) for f in web)
            self._apps[(stored.kind, stored.name)] = AppRecord(
                name=stored.name,
                kind=stored.kind,
                state=AppState.STOPPED,
                current=Version(version.number, version.spec, source, endpoints, {}),
                versions=version.number,
                created_at=stored.created_at,
            )
        self._publish(self.routes())

    def history(self, name: str) -> list[StoredVersion]:
        record = self.get(name)
        return self._store.versions(record.kind, name)

    async def rollback(self, name: str, number: int | None = None) -> AppRecord:
        """Deploy an earlier version again, as a new version (Modal's `app rollback`)."""
        record = self.get(name, "deployed")
        if number is None:
            number = record.versions - 1
            if number < 1:
                raise InvalidError(f"App {name!r} has no earlier version to roll back to.")
        target = self._store.version("deployed", name, number)
        source = Source(target.module_file, target.source_dir)
        return await self.publish(
            name, target.spec, source, kind="deployed", tag=target.tag, rollback_of=number
        )

    async def close(self) -> None:
        draining = [p for _, v in self._retiring.values() for p in v.pools.values()]
        for task in list(self._retiring):
            task.cancel()
        pools = [p for r in self._apps.values() if r.current for p in r.current.pools.values()] + draining
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)

    def function_pool(
        self, app_name: str, tag: str, kind: AppKind = "deployed"
    ) -> tuple[AppRecord, FunctionPool]:
        """The pool serving function `tag` of the running app `app_name` (for `.remote()`): the
        deployed one, or with `kind="ephemeral"` the one `cove serve`/`cove run` runs."""
        try:
            record = self.get(app_name, kind)
        except NotFoundError:
            if kind == "deployed":
                raise
            raise NotFoundError(
                f"Ephemeral app {app_name!r} is not running (`cove serve`/`cove run` runs it)."
            ) from None
        if record.state is AppState.STOPPED or record.current is None:
            if kind == "ephemeral":
                raise NotFoundError(f"Ephemeral app {app_name!r} has stopped; run it again.")
            raise NotFoundError(f"App {app_name!r} is stopped. Deploy it again with `cove deploy`.")
        pool = record.current.pools.get(tag)
        if pool is None:
            raise NotFoundError(
                f"Lookup failed for Function {tag!r} from the {app_name!r} app: it has no such function."
            )
        return record, pool

    def containers(self, app_name: str | None = None) -> list[tuple[AppRecord, ContainerInfo]]:
        """Live containers of running apps (all apps, or those called `app_name`)."""
        found: list[tuple[AppRecord, ContainerInfo]] = []
        for record in self._apps.values():
            if record.current is None or record.state is AppState.STOPPED:
                continue
            if app_name is not None and record.name != app_name:
                continue
            for pool in record.current.pools.values():
                found.extend((record, info) for info in pool.containers())
        return found

    async def stop_container(self, container_id: str) -> None:
        for record in self._apps.values():
            if record.current is None:
                continue
            for pool in record.current.pools.values():
                if await pool.stop_container(container_id, self._settings.drain_s):
                    tag = pool.spec.tag
                    self._logs.write(record.log_key, tag, container_id, "system", "stopped by request")
                    return
        raise NotFoundError(f"Container {container_id!r} not found. See `cove container list`.")

    def routes(self) -> dict[str, Route]:
        table: dict[str, Route] = {}
        for record in self._apps.values():
            version = record.current
            if version is None:
                continue
            running = record.state is AppState.RUNNING
            for endpoint in version.endpoints:
                spec = version.spec.function(endpoint.tag)
                route = Route(
                    app_name=record.name,
                    function_tag=endpoint.tag,
                    upstream=version.pools[endpoint.tag] if running else None,
                    timeout_s=spec.timeout_s,
                    requires_proxy_auth=endpoint.requires_proxy_auth,
                    session_affinity=endpoint.kind == "http_server",
                    sessioned=spec.web is not None and spec.web.sessioned,
                )
                for host in (endpoint.host, *endpoint.custom_domains):
                    key = host_key(host)
                    # A running app wins a host over a stopped one that used to have it.
                    if running or key not in table:
                        table[key] = route
        return table

    def _endpoint(self, app_name: str, fn: FunctionSpec, dev_suffix: str | None) -> Endpoint:
        assert fn.web is not None
        host = endpoint_host(
            self._settings.workspace,
            app_name,
            fn.tag,
            label=fn.web.label,
            dev_suffix=dev_suffix,
            base_domain=self._settings.base_domain,
        )
        return Endpoint(
            tag=fn.tag,
            host=host,
            url=endpoint_url(host, self._gateway_port()),
            kind=fn.web.kind,
            custom_domains=fn.web.custom_domains,
            requires_proxy_auth=fn.web.requires_proxy_auth,
        )

    def _check_conflicts(self, kind: AppKind, name: str, endpoints: tuple[Endpoint, ...]) -> None:
        seen: dict[str, str] = {}
        for endpoint in endpoints:
            for host in (endpoint.host, *endpoint.custom_domains):
                if host in seen:
                    raise InvalidError(
                        f"Functions {seen[host]!r} and {endpoint.tag!r} of app {name!r} both want the host "
                        f"{host}. Give one of them a different label=..."
                    )
                seen[host] = endpoint.tag
        for other in self._apps.values():
            if (
                other is self._apps.get((kind, name))
                or other.state is AppState.STOPPED
                or other.current is None
            ):
                continue
            for endpoint in other.current.endpoints:
                for host in (endpoint.host, *endpoint.custom_domains):
                    if host in seen:
                        raise InvalidError(
                            f"Host {host} is already served by app {other.name!r} ({endpoint.tag}). "
                            "Stop that app or choose another label=..."
                        )

    def bundle_root(self, source: Source) -> Path | None:
        """The unpacked bundle a version runs from (every local path of its manifest lies inside
        it), or None for `cove serve`, whose paths are the user's own on this machine."""
        return self._bundle_of(source.source_dir)

    def _request(
        self, app_name: str, kind: AppKind, fn: FunctionSpec, source: Source, env: dict[str, str]
    ) -> ContainerRequest:
        """What a container of `fn` needs, with its local mounts resolved on this machine.

        A deployed version's mounts come from its bundle (`mounts/<remote path>`); `cove serve`
        mounts the user's paths themselves, so edits show up in the next container.
        """
        root = self.bundle_root(source)
        mounts: list[tuple[str, str]] = []
        extra_source: list[tuple[str, str]] = []
        for step in fn.image.steps:
            if not step.kind.startswith("add_local") or step.arg("copy", False):
                continue
            if step.kind == "add_local_python_source":
                if root is None:  # a bundle has them in src/ already
                    paths = [p for p in step.arg("paths", ()) if p]
                    extra_source += [(p, f"{CONTAINER_HOME}/{os.path.basename(p)}") for p in paths]
                continue
            remote = str(step.arg("remote_path"))
            what = f"Image.{step.kind}()"
            if root is not None:
                local = str(resolve_in_bundle(root, str(step.arg("local_path")), what))
            else:
                local = str(step.arg("local_path"))
                if not os.path.exists(local):
                    raise InvalidError(f"{what}: {local} does not exist, so it cannot be mounted at {remote}")
            mounts.append((local, remote))
        volumes, env = self._volumes(fn, env)
        return ContainerRequest(
            app_name=app_name,
            function=fn,
            module_file=source.module_file,
            source_dir=source.source_dir,
            env=env,
            mounts=tuple(mounts),
            extra_source=tuple(extra_source),
            app_kind=kind,
            api_socket=self._api_socket(kind, app_name) if self._api_socket else None,
            volumes=volumes,
        )

    def _volumes(
        self, fn: FunctionSpec, env: dict[str, str]
    ) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
        """The (host directory, container path) of each Volume `fn` mounts, created if it asks so, and
        the container's environment with `COVE_VOLUME_MOUNTS` ({name: path}) added."""
        if not fn.volumes:
            return (), env
        if not self._backend.capabilities.host_paths or self._volume_path is None:
            raise InvalidError(
                f"Function {fn.tag!r} mounts Volumes ({', '.join(v.name for v in fn.volumes)}), which the "
                f"{self._settings.backend} backend does not support yet: Volumes are directories on the "
                "server's machine. Use the local backend, or read and write them with the Volume "
                "methods (listdir, read_file, batch_upload) from the function."
            )
        pairs = tuple((str(self._volume_path(v.name, v.create_if_missing)), v.path) for v in fn.volumes)
        names = {v.name: v.path for v in fn.volumes}
        return pairs, {**env, "COVE_VOLUME_MOUNTS": json.dumps(names, sort_keys=True)}

    def _release(self, version: Version) -> None:
        for request in version.requests:
            self._backend.release(request)
        version.requests = ()

    def _launcher(self, log_key: str, request: ContainerRequest) -> Callable[[], ContainerHandle]:
        fn = request.function
        logs = self._logs

        def sink(container_id: str, stream: Stream, line: str) -> None:
            logs.write(log_key, fn.tag, container_id, stream, line)

        def launch() -> ContainerHandle:
            handle = self._backend.launch(request, sink)
            logs.write(log_key, fn.tag, handle.id, "system", f"starting container for {fn.tag}")
            return handle

        return launch

    def _retire(self, record: AppRecord, version: Version) -> None:
        async def drain() -> None:
            grace_s = self._settings.drain_s
            await asyncio.gather(*(p.drain(grace_s) for p in version.pools.values()), return_exceptions=True)
            self._release(version)

        task = asyncio.ensure_future(drain())
        self._retiring[task] = (record, version)
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
