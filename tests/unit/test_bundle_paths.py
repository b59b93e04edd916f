"""`relocate` and `resolve_in_bundle`: a deployed manifest's paths point into its bundle, and only there."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import cove
from cove._bundle import extract_bundle, make_bundle, relocate, resolve_in_bundle
from cove._control.image_plan import _localize
from cove.exception import InvalidError


def test_relocated_paths_are_the_bundles_own(tmp_path: Path) -> None:
    """Every path an image step names is rewritten to a relative path the bundle holds."""
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "a.txt").write_text("a")
    (outside / "requirements.txt").write_text("humanize\n")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "main.py"
    module.write_text("")
    image = (
        cove.Image.debian_slim()
        .pip_install_from_requirements(str(outside / "requirements.txt"))
        .add_local_dir(str(outside / "data"), "/data", copy=True)
        .add_local_dir(str(outside / "data"), "/mounted")
    )
    app = cove.App("paths", image=image)

    @app.function(serialized=True)
    def noop() -> None: ...

    spec = app._manifest()
    bundle = tmp_path / "bundle"
    extract_bundle(make_bundle(spec, str(module)), bundle)
    relocated = relocate(spec)
    paths = [
        value
        for step in relocated.functions[0].image.steps
        for key, value in step.args
        if key in ("path", "local_path")
    ]
    assert len(paths) == 3
    for path in paths:
        assert not os.path.isabs(path)
        assert resolve_in_bundle(bundle, path, "step").exists()
    assert resolve_in_bundle(bundle, paths[1], "step").joinpath("a.txt").read_text() == "a"


@pytest.mark.parametrize("path", ["/etc", "../secrets", "files/../../secrets", "", "link/x"])
def test_paths_out_of_the_bundle_are_refused(tmp_path: Path, path: str) -> None:
    """Absolute paths, `..` and symlinks that lead out of the bundle are refused, naming the path."""
    root = tmp_path / "bundle"
    (tmp_path / "secrets" / "x").mkdir(parents=True)
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "secrets")
    with pytest.raises(InvalidError, match="is not inside the uploaded source bundle"):
        resolve_in_bundle(root, path, "Image.add_local_dir()")


def test_a_bundle_with_a_link_out_of_it_does_not_unpack(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("files/x")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../secrets"
        tar.addfile(link)
    with pytest.raises(tarfile.TarError):
        extract_bundle(buffer.getvalue(), tmp_path / "bundle")


@pytest.mark.parametrize(
    "image",
    [
        cove.Image.debian_slim().pip_install("x", extra_options="-r /root/.cove/secrets/db.json"),
        cove.Image.debian_slim().pip_install("x", extra_options="--constraint=/etc/passwd"),
        cove.Image.debian_slim().pip_install("x", find_links="/root/.cove"),
        cove.Image.debian_slim().pip_install("x", index_url="file:///root/.cove"),
    ],
)
def test_pip_options_naming_server_paths_are_refused_in_a_deployed_image(
    tmp_path: Path, image: cove.Image
) -> None:
    """Options that make uv read the server's files (-r, -c, local find-links or index) are refused."""
    step = image._spec.steps[-1]
    with pytest.raises(InvalidError, match=r"server|http"):
        _localize(step, tmp_path)


def test_the_bundle_store_says_which_bundle_a_version_runs_from(tmp_path: Path) -> None:
    """A deployed version's sources are a bundle of the store (its mounts resolve in it); a
    `cove serve` version's are the user's own directory, even one that looks like a bundle."""
    from cove._control.bundles import BundleStore

    user = tmp_path / "user" / "src"
    user.mkdir(parents=True)
    (user / "app.py").write_text("import cove\n")
    store = BundleStore(tmp_path / "bundles")
    app = cove.App("bundled")

    @app.function(serialized=True)
    def noop() -> None: ...

    digest = store.save(make_bundle(app._manifest(), str(user / "app.py"), source_dir=str(user)))
    source = store.source(digest, "app.py")
    assert store.root_of(source.source_dir) == store.root(digest)
    assert store.root_of(str(user)) is None
    lookalike = tmp_path / "elsewhere" / "bundles" / "abc" / "src"
    lookalike.mkdir(parents=True)
    assert store.root_of(str(lookalike)) is None
