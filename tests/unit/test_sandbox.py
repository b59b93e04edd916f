"""The sandbox argv builder: what a container sees, which namespaces it gets, and build steps' argv."""

from __future__ import annotations

import dataclasses

import pytest

from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.sandbox import (
    Bind,
    BuildNeeds,
    ContainerNeeds,
    HostSystem,
    Limits,
    build_argv,
    container_argv,
    container_env,
    spare_key,
    with_limits,
)

HOST = HostSystem(
    dirs=("/usr",),
    links=(("/bin", "usr/bin"), ("/lib", "usr/lib")),
    etc=("/etc/hosts", "/etc/resolv.conf", "/etc/ssl"),
)


def needs(**changes: object) -> ContainerNeeds:
    base = ContainerNeeds(
        command=("python", "-m", "cove._container.entrypoint"),
        venv="/cache/layers/k/venv",
        sdk="/srv/cove/src/cove",
        run_dir="/home/u/.cove/run/ta-1",
        interpreter=("/opt/python/3.11",),
        host=HOST,
        source_dir="/home/u/app",
        source_entries=("app.py", "pkg"),
        control_fd=5,
        info_fd=7,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    """(source, target) of every `flag SOURCE TARGET` in argv."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def before_command(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")]


def test_a_container_gets_every_namespace_and_no_capabilities() -> None:
    argv = before_command(container_argv(needs()))
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"):
        assert flag in argv
    # A worker that kills itself must die (PID 1 would be immune): bwrap's init stays PID 1.
    assert "--as-pid-1" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "--cap-add" not in argv
    assert "--share-net" not in argv


def test_the_command_follows_the_double_dash_and_bwrap_comes_first() -> None:
    argv = container_argv(needs(), bwrap="/usr/bin/bwrap")
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[argv.index("--") + 1 :] == ["python", "-m", "cove._container.entrypoint"]


def test_a_venv_image_sees_host_system_dirs_read_only_and_only_allowlisted_etc() -> None:
    argv = container_argv(needs())
    ro = pairs(argv, "--ro-bind")
    assert ("/usr", "/usr") in ro
    assert ("/etc/hosts", "/etc/hosts") in ro and ("/etc/ssl", "/etc/ssl") in ro
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin"), ("usr/lib", "/lib")]
    assert not any(target.startswith("/etc/shadow") for _, target in ro)
    assert ("/etc", "/etc") not in ro


def test_the_etc_allowlist_never_names_credentials() -> None:
    for path in sandbox.ETC_ALLOWLIST:
        assert path.startswith("/etc/")
        assert not any(word in path for word in ("shadow", "ssh", "sudo", "gshadow", "cove"))


def test_the_only_writable_bind_is_the_containers_own_run_dir() -> None:
    argv = container_argv(needs(mounts=(Bind("/data", "/data"),), files=(Bind("/cache/f", "/etc/app.conf"),)))
    assert pairs(argv, "--bind") == [("/home/u/.cove/run/ta-1", sandbox.RUN)]


def test_venv_sdk_and_interpreter_are_read_only_and_the_sdk_is_on_pythonpath() -> None:
    argv = container_argv(needs())
    ro = pairs(argv, "--ro-bind")
    assert ("/cache/layers/k/venv", sandbox.VENV) in ro
    assert ("/srv/cove/src/cove", f"{sandbox.SDK}/cove") in ro
    assert ("/opt/python/3.11", "/opt/python/3.11") in ro
    env = dict(container_env(needs()))
    assert env["PYTHONPATH"] == sandbox.SDK
    assert env["PATH"].startswith(f"{sandbox.VENV}/bin:")


def test_source_entries_are_bound_read_only_into_a_private_home() -> None:
    argv = container_argv(needs())
    ro = pairs(argv, "--ro-bind")
    assert ("/home/u/app/app.py", "/root/app.py") in ro
    assert ("/home/u/app/pkg", "/root/pkg") in ro
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/root" in tmpfs and "/tmp" in tmpfs
    # The private /root comes first; binds into it come after (bwrap applies them in order).
    assert argv.index("/root") < argv.index("/root/app.py")
    assert argv.index("/root") < argv.index("/opt/python/3.11")


def test_a_bad_source_entry_is_refused() -> None:
    for entry in ("", "a/b", "..", "."):
        with pytest.raises(ValueError, match="one name"):
            container_argv(needs(source_entries=(entry,)))


def test_relative_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        container_argv(needs(mounts=(Bind("data", "/data"),)))
    with pytest.raises(ValueError, match="absolute"):
        container_argv(needs(mounts=(Bind("/data", "data"),)))
    with pytest.raises(ValueError, match="absolute"):
        container_argv(needs(venv="venv"))
    with pytest.raises(ValueError, match="command"):
        container_argv(needs(command=()))


def test_mounts_and_baked_files_are_read_only_at_their_container_paths() -> None:
    argv = container_argv(needs(mounts=(Bind("/home/u/data", "/data"),), files=(Bind("/c/f/x", "/etc/x"),)))
    ro = pairs(argv, "--ro-bind")
    assert ("/home/u/data", "/data") in ro
    assert ("/c/f/x", "/etc/x") in ro


def test_the_root_is_remounted_read_only_after_every_mount_point_is_made() -> None:
    argv = before_command(container_argv(needs(mounts=(Bind("/d", "/data"),))))
    position = argv.index("--remount-ro")
    assert argv[position + 1] == "/"
    last_bind = max(i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--tmpfs", "--symlink"))
    assert position > last_bind


def test_a_rootfs_image_is_the_root_and_host_dirs_are_not_bound() -> None:
    argv = container_argv(needs(rootfs="/cache/layers/k/rootfs"))
    assert argv[1:4] == ["--bind", "/cache/layers/k/rootfs", "/"]
    assert ("/usr", "/usr") not in pairs(argv, "--ro-bind")
    assert "--symlink" not in argv
    assert "--remount-ro" in argv


def test_a_rootfs_image_with_outbound_network_gets_the_hosts_resolver() -> None:
    argv = container_argv(needs(rootfs="/r", network="outbound"))
    assert ("/etc/resolv.conf", "/etc/resolv.conf") in pairs(argv, "--ro-bind-try")
    argv = container_argv(needs(rootfs="/r", network="none"))
    assert "--ro-bind-try" not in argv


def test_blocked_network_drops_the_resolver_and_never_shares_the_hosts_network() -> None:
    argv = container_argv(needs(network="none"))
    assert ("/etc/resolv.conf", "/etc/resolv.conf") not in pairs(argv, "--ro-bind")
    assert "--share-net" not in argv
    outbound = container_argv(needs(network="outbound"))
    assert ("/etc/resolv.conf", "/etc/resolv.conf") in pairs(outbound, "--ro-bind")
    assert "--share-net" not in outbound  # outbound goes through pasta, attached by the caller


def test_what_the_image_put_in_root_is_restored_read_only() -> None:
    argv = container_argv(needs(rootfs="/r", image_home=(".bashrc", "models")))
    ro = pairs(argv, "--ro-bind")
    assert ("/r/root/.bashrc", "/root/.bashrc") in ro
    assert ("/r/root/models", "/root/models") in ro
    assert argv.index("/root") < argv.index("/r/root/models")


def test_a_workdir_outside_root_is_private_and_keeps_the_images_files() -> None:
    argv = container_argv(needs(rootfs="/r", workdir="/app", workdir_entries=("main.py",)))
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/app" in tmpfs
    assert ("/r/app/main.py", "/app/main.py") in pairs(argv, "--ro-bind")
    assert argv[argv.index("--chdir") + 1] == "/app"


def test_a_workdir_under_root_or_tmp_needs_no_extra_tmpfs() -> None:
    for workdir in ("/root", "/root/sub", "/tmp"):
        argv = container_argv(needs(workdir=workdir))
        tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
        assert tmpfs == ["/tmp", "/root"]


def test_the_environment_is_cleared_and_rebuilt_without_the_servers() -> None:
    argv = container_argv(needs(env=(("MODE", "prod"),)))
    assert "--clearenv" in argv
    env = pairs(argv, "--setenv")
    names = [name for name, _ in env]
    assert names == sorted(names)
    assert ("MODE", "prod") in env
    assert ("COVE_CONTROL_FD", "5") in env
    assert ("HOME", "/root") in env
    assert not any(name in ("COVE_HOME", "COVE_TOKEN") for name in names)


def test_an_images_path_and_pythonpath_keep_the_venv_and_sdk_first() -> None:
    env = dict(container_env(needs(env=(("PATH", "/opt/bin:/usr/bin"), ("PYTHONPATH", "/lib")))))
    assert env["PATH"] == f"{sandbox.VENV}/bin:/opt/bin:/usr/bin"
    assert env["PYTHONPATH"] == f"{sandbox.SDK}:/lib"


def test_info_fd_is_passed_only_when_asked() -> None:
    argv = container_argv(needs(info_fd=9))
    assert argv[argv.index("--info-fd") + 1] == "9"
    assert "--info-fd" not in container_argv(needs(info_fd=None))


def test_limits_wrap_the_argv_in_a_shell_that_joins_cgroups_and_sets_rlimits() -> None:
    wrapped = container_argv(
        needs(limits=Limits(cgroup_procs=("/sys/fs/cgroup/cove/ta-1/cgroup.procs",), data_bytes=64 * 2**20))
    )
    assert wrapped[:2] == ["/bin/sh", "-c"]
    script = wrapped[2]
    assert "echo $$ > /sys/fs/cgroup/cove/ta-1/cgroup.procs" in script
    assert "ulimit -d 65536" in script
    assert script.endswith('exec "$@"')
    assert wrapped[4] == "bwrap"


def test_no_limits_no_wrapper_and_bad_limits_are_refused() -> None:
    assert with_limits(["bwrap", "x"], Limits()) == ["bwrap", "x"]
    with pytest.raises(ValueError, match="positive"):
        with_limits(["x"], Limits(data_bytes=0))


def test_cgroup_paths_are_shell_quoted() -> None:
    script = with_limits(["x"], Limits(cgroup_procs=("/sys/fs/cgroup/a b/cgroup.procs",)))[2]
    assert "'/sys/fs/cgroup/a b/cgroup.procs'" in script


def test_spares_are_interchangeable_across_run_dirs_fds_and_cgroups_only() -> None:
    base = spare_key(needs())
    assert spare_key(needs(run_dir="/x", control_fd=3, info_fd=4)) == base
    assert spare_key(needs(limits=Limits(cgroup_procs=("/c",)))) == base
    for change in (
        {"source_entries": ("app.py",)},
        {"network": "none"},
        {"env": (("A", "1"),)},
        {"mounts": (Bind("/d", "/data"),)},
        {"rootfs": "/r"},
        {"venv": "/other/venv"},
        {"workdir": "/app"},
    ):
        assert spare_key(needs(**change)) != base, change


def build(**changes: object) -> BuildNeeds:
    base = BuildNeeds(command=("/bin/sh", "-c", "apt-get install -y cowsay"), rootfs="/cache/work/rootfs")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_build_step_writes_its_rootfs_shares_the_network_and_keeps_only_build_capabilities() -> None:
    argv = build_argv(build())
    assert argv[1:4] == ["--bind", "/cache/work/rootfs", "/"]
    assert "--share-net" in argv and "--unshare-net" not in argv and "--unshare-all" not in argv
    added = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert added == list(sandbox.BUILD_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in added and "CAP_MKNOD" not in added
    assert argv.index("--cap-drop") < argv.index("--cap-add")
    assert argv[argv.index("--") + 1 :] == ["/bin/sh", "-c", "apt-get install -y cowsay"]


def test_a_build_step_as_root_keeps_real_root_and_otherwise_gets_a_user_namespace() -> None:
    assert "--unshare-user" not in build_argv(build(host_is_root=True))
    argv = build_argv(build(host_is_root=False))
    assert argv[argv.index("--uid") + 1] == "0"
    assert "--unshare-user" in argv


def test_a_build_steps_environment_is_fixed_plus_its_own() -> None:
    env = dict(pairs(build_argv(build(env=(("HTTP_PROXY", "x"),))), "--setenv"))
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["HTTP_PROXY"] == "x"
    assert env["PATH"].startswith(f"{sandbox.VENV}/bin:")


def test_a_build_steps_binds_and_workdir_are_honoured() -> None:
    argv = build_argv(build(binds=(Bind("/cache/uv", "/cache/uv", writable=True),), workdir="/app"))
    assert ("/cache/uv", "/cache/uv") in pairs(argv, "--bind")
    assert argv[argv.index("--chdir") + 1] == "/app"
    with pytest.raises(ValueError, match="command"):
        build_argv(build(command=()))


def test_the_apps_control_socket_directory_is_bound_read_only_and_only_when_given() -> None:
    argv = container_argv(needs(api_dir="/home/u/.cove/run/api-1234abcd"))
    assert ("/home/u/.cove/run/api-1234abcd", sandbox.API_DIR) in pairs(argv, "--ro-bind")
    assert pairs(argv, "--bind") == [("/home/u/.cove/run/ta-1", sandbox.RUN)]
    assert argv.index("--remount-ro") > argv.index(sandbox.API_DIR)
    assert sandbox.API_DIR not in container_argv(needs())
    assert spare_key(needs(api_dir="/a")) != spare_key(needs(api_dir="/b"))  # apps never share a spare
