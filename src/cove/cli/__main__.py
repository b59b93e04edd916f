"""`python -m cove.cli` runs the CLI (the server starts itself this way in the background)."""

from cove.cli import main

main()
