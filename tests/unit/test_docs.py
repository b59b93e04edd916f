"""The README stays in step with the code it documents."""

from __future__ import annotations

from pathlib import Path

from cove.config import ENVIRONMENT

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_setting() -> None:
    """Each environment variable in config.ENVIRONMENT has a row in README's Settings table."""
    missing = [name for name in ENVIRONMENT if f"| `{name}` |" not in README]
    assert missing == []


def test_readme_gives_each_settings_default_as_config_writes_it() -> None:
    """README's default column repeats config.ENVIRONMENT's defaults (`none` where there is none)."""
    wrong = []
    for name, (default, _) in ENVIRONMENT.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")), "")
        shown = row.split("|")[2].strip() if row else ""
        if shown != ("none" if default is None else f"`{default}`"):
            wrong.append((name, shown, default))
    assert wrong == []


def test_readme_starts_with_the_two_setup_commands() -> None:
    """README opens with exactly two commands: serve the demo, and the test command `.ci/run` runs."""
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("cove serve examples/demo.py")
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text(encoding="utf-8")
    assert block[1] in ci.splitlines()


def test_every_test_named_in_the_guarantees_exists() -> None:
    """docs/guarantees.md names the test behind each promise; each one must exist."""
    import re

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(named) > 20
    missing = []
    for path, name in named:
        source = (root / path).read_text(encoding="utf-8") if (root / path).exists() else ""
        if not re.search(rf"^(async )?def {name}\(", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []
