"""The `cove` command line: one module per command group."""

from __future__ import annotations

from typing import Any

import click

from cove import exception
from cove.cli import _render as render
from cove.cli.app import app
from cove.cli.container import container
from cove.cli.deploy import deploy
from cove.cli.dict import dict_group
from cove.cli.queue import queue_group
from cove.cli.run import run
from cove.cli.secret import secret
from cove.cli.serve import serve
from cove.cli.server import server
from cove.cli.token import token
from cove.cli.volume import volume_group


class _Main(click.Group):
    """Every command ends a Cove error the same way: one readable message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except exception.Error as exc:
            render.error(str(exc))
            raise SystemExit(1) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cove")
def main() -> None:
    """Cove: serverless Python web endpoints on your own machines."""


main.add_command(serve)
main.add_command(run)
main.add_command(deploy)
main.add_command(app)
main.add_command(container)
main.add_command(server)
main.add_command(secret)
main.add_command(token)
main.add_command(dict_group)
main.add_command(queue_group)
main.add_command(volume_group)

__all__ = ["main"]
