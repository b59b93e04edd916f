"""The README stays in step with the code it documents."""

from __future__ import annotations

from pathlib import Path

from cove.config import ENVIRONMENT

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_setting() -> None:
    """Each environment variable in config.ENVIRONMENT has a row in README's Settings table."""
    missing = [name for name in ENVIRONMENT if f"| `{name}` |" not in README]
    assert missing == []


def test_readme_starts_with_the_two_setup_commands() -> None:
    """README opens with exactly two commands: serve the demo, and the test command `.ci/run` runs."""
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("cove serve examples/demo.py")
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text(encoding="utf-8")
    assert block[1] in ci.splitlines()
