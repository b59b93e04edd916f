"""The `cove` command line: serve, server and secret (one module per command group)."""

from __future__ import annotations

import click

from cove.cli.secret import secret
from cove.cli.serve import serve
from cove.cli.server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cove")
def main() -> None:
    """Cove: serverless Python web endpoints on your own machines."""


main.add_command(serve)
main.add_command(server)
main.add_command(secret)

__all__ = ["main"]
