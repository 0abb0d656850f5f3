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


def _glm_jax_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].strip()
                if part.startswith(("glm-jax ", ".venv/bin/glm-jax ")):
                    commands.append(part)
    return commands


def test_every_readme_glm_jax_command_parses():
    """Each `glm-jax ...` line of the README names a real subcommand and real options
    (the runnable ones also run: tests/test_cli_train.py, test_cli_generate.py, ...)."""
    import shlex

    from glm_jax import cli

    commands = _glm_jax_commands()
    assert len(commands) >= 8
    parser = cli.build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse exits on a bad option
            raise AssertionError(f"README command does not parse: {command}") from e
        assert args.command == argv[0], command
