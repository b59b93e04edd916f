"""The build sandbox's argv: COVE_HOME hidden wherever a bind would show it, the virtualenv inside it
still writable, and nothing of the server's environment but uv's, proxy and TLS settings."""

from __future__ import annotations

from pathlib import Path

from cove._control.build_sandbox import VenvBuild, optional_paths, requirement_reads, venv_build_argv
from cove._runtime.backends.local.sandbox import HostSystem

HOST = HostSystem(dirs=("/usr",), links=(("/bin", "usr/bin"),), etc=("/etc/passwd",))


def _mounts(argv: list[str]) -> list[tuple[str, str]]:
    """(option, target) of each mount, in bwrap's order."""
    found = []
    for index, word in enumerate(argv):
        if word in ("--bind", "--ro-bind"):
            found.append((word, argv[index + 2]))
        elif word == "--tmpfs":
            found.append((word, argv[index + 1]))
    return found


def _build(tmp_path: Path, **changes: object) -> VenvBuild:
    home = tmp_path / "user" / ".cove"
    venv = home / "images" / "layers" / ".build-1" / "venv"
    venv.mkdir(parents=True)
    (tmp_path / "uv").write_text("")
    values: dict[str, object] = {
        "command": (str(tmp_path / "uv"), "pip", "install", "x"),
        "venv": str(venv),
        "cache": str(tmp_path / "cache"),
        "cove_home": str(home),
        **changes,
    }
    return VenvBuild(**values)  # type: ignore[arg-type]


def test_cove_home_is_hidden_inside_a_bound_directory_and_the_venv_in_it_is_bound_after(
    tmp_path: Path,
) -> None:
    user = tmp_path / "user"  # e.g. `cove serve` of ~/requirements.txt, COVE_HOME ~/.cove
    build = _build(tmp_path, reads=(str(user),))
    home, venv = str(user / ".cove"), build.venv
    mounts = _mounts(
        venv_build_argv(build, bwrap="bwrap", host=HOST, environ={}, exists=frozenset({str(user)}))
    )
    assert (
        mounts.index(("--ro-bind", str(user)))
        < mounts.index(("--tmpfs", home))
        < mounts.index(("--bind", venv))
    )
    assert mounts[-1] == ("--bind", venv)


def test_cove_home_seen_through_a_symlinked_directory_is_hidden_at_that_path(tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "user")
    build = _build(tmp_path, reads=(str(alias),))
    argv = venv_build_argv(build, bwrap="bwrap", host=HOST, environ={}, exists=frozenset({str(alias)}))
    assert ("--tmpfs", str(alias / ".cove")) in _mounts(argv)


def test_a_requirements_file_next_to_cove_home_is_read_alone(tmp_path: Path) -> None:
    home = tmp_path / ".cove"
    home.mkdir()
    beside, bundled = str(tmp_path / "requirements.txt"), str(home / "bundles" / "a" / "requirements.txt")
    assert requirement_reads([beside, bundled], str(home)) == [beside, str(home / "bundles" / "a")]


def test_the_server_environment_stays_out_but_uv_proxy_and_tls_settings_and_the_steps_env_get_in(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    environ = {
        "COVE_API_TOKEN": "t0ken",
        "AWS_SECRET_ACCESS_KEY": "k3y",
        "HOME": "/root",
        "UV_FIND_LINKS": str(wheels),
        "https_proxy": "http://proxy:3128",
        "UV_INDEX_URL": "https://pypi.example/simple",
    }
    build = _build(tmp_path, env=(("UV_INDEX_URL", "https://mine.example/simple"), ("TOKEN", "step")))
    exists = optional_paths(build, environ)
    argv = venv_build_argv(build, bwrap="bwrap", host=HOST, environ=environ, exists=exists)
    env = {argv[i + 1]: argv[i + 2] for i, word in enumerate(argv) if word == "--setenv"}
    assert "--clearenv" in argv and argv.index("--clearenv") < argv.index("--setenv")
    assert env["UV_INDEX_URL"] == "https://mine.example/simple" and env["TOKEN"] == "step"
    assert env["https_proxy"] == "http://proxy:3128" and env["HOME"] == "/root"
    assert "COVE_API_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert ("--ro-bind", str(wheels)) in _mounts(argv)  # the operator's local index stays usable
    assert {"--unshare-user", "--unshare-pid", "--die-with-parent"} <= set(argv)
    assert "--unshare-net" not in argv and "--share-net" in argv
