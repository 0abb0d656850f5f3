"""The README's set-up commands are the ones CI and users actually run."""

import re

from conftest import REPO


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert any("pytest" in c for c in commands) and any("glm-jax" in c for c in commands)


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
