"""glm_jax/cli/__init__.py: the table of commands, loaded lazily; the help lists every
command and every option with its default; bad arguments give one clear line on
stderr and exit code 2; errors map to the documented exit codes."""

import argparse
import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from glm_jax import cli, nonfinite, plots
from glm_jax.checkpointing import CheckpointError

#: Commands the README and docs use; others may be added.
DOCUMENTED = {"train", "generate", "convert", "forward", "show-example", "plot-metrics"}
#: How a help text states its default in words (then the formatter adds nothing).
STATED_DEFAULT = r"\(default\b|\bdefault:"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flat(text: str) -> str:
    return " ".join(text.split())


def squeezed(text: str) -> str:
    """No whitespace at all: argparse wraps at hyphens too, and at a width that
    depends on the other options, so only the characters can be compared."""
    return "".join(text.split())


def action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help block argparse prints for one argument, whitespace collapsed."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return flat(formatter.format_help())


def test_top_level_help_lists_every_command(capsys):
    commands = subcommands()
    assert DOCUMENTED <= set(commands)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in commands:
        assert re.search(rf"^\s+{re.escape(name)}\b", out, re.M), name


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help_and_shows_its_default(name, capsys):
    parser = subcommands()[name]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    full = squeezed(capsys.readouterr().out)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        where = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{where} has no help"
        block = action_help(parser, action)
        assert squeezed(block) in full, where  # the block is what `--help` shows
        if not action.option_strings:
            continue  # positionals: help is enough
        if action.required:
            assert block.endswith("(required)"), where
        else:
            assert re.search(STATED_DEFAULT, block), f"{where} does not show its default: {block}"
            if not re.search(STATED_DEFAULT, action.help):  # stated by the formatter: the real value
                assert block.endswith(f"(default: {action.default})"), where


def test_bad_integer_says_what_was_expected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show-example", "--seq-len", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "glm-jax show-example: error: argument --seq-len: expected an integer >= 8, got 'abc'" in err
    with pytest.raises(SystemExit):
        cli.main(["show-example", "--seq-len", "4"])
    assert "expected an integer >= 8, got 4" in capsys.readouterr().err


def test_unknown_choice_and_command_list_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--checkpoint", "x", "--strategy", "fast", "p"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "glm-jax generate: error: argument --strategy: invalid choice: 'fast' (choose from" in err
    assert "greedy" in err and "beam" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "show-example" in err


def test_unknown_task_lists_the_registered_ones(capsys):
    assert cli.main(["show-example", "--task", "glm_pretrain_nope", "--no-image"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()  # one line, no traceback
    assert line.startswith("glm-jax: error: unknown task 'glm_pretrain_nope'; registered GLM tasks: ")
    assert "glm_pretrain_token_embedded" in line


def test_plot_metrics_command(tmp_path, capsys):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "train/loss": 5.0 / s}) for s in (1, 2, 3)))
    assert cli.main(["plot-metrics", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == f"curves written to {logs / 'loss_curve.png'}"
    with Image.open(logs / "loss_curve.png") as image:
        assert image.size == plots.CURVE_SIZE
    assert cli.main(["plot-metrics", str(tmp_path / "missing")]) == 2
    assert "glm-jax: error: no metrics.jsonl at" in capsys.readouterr().err


def test_every_command_module_has_add_arguments_and_run():
    for name in cli.TABLE:
        module = cli.load_command(name)
        assert module.__name__.startswith("glm_jax.cli."), name
        assert callable(module.add_arguments) and callable(module.run), name


def test_top_level_help_imports_no_command_and_no_jax():
    """`glm-jax --help` builds the command list from the table alone."""
    code = (
        "import sys\n"
        "from glm_jax import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'jax', 'tensorflow', 'seqio', 'orbax'} & set(sys.modules)\n"
        "commands = [m for m in sys.modules if m.startswith('glm_jax.cli.')]\n"
        "print('LOADED', sorted(heavy), sorted(commands))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED [] []" in result.stdout, result.stdout


def test_main_loads_only_the_command_it_runs():
    parser = cli.build_parser(["plot-metrics"])
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(action.choices) == set(cli.TABLE)
    assert "run_dir" in [a.dest for a in action.choices["plot-metrics"]._actions]
    assert [a.dest for a in action.choices["train"]._actions] == ["help", "debug"]


def test_errors_map_to_the_documented_exit_codes():
    assert cli.EXIT_NONFINITE == nonfinite.EXIT_NONFINITE
    assert cli.exit_code_of(nonfinite.NonFiniteError("diverged", step=3)) == cli.EXIT_NONFINITE == 3
    for error in (ValueError("x"), KeyError("x"), FileNotFoundError("x"), CheckpointError("x")):
        assert cli.exit_code_of(error) == cli.EXIT_USAGE == 2, error
    assert cli.exit_code_of(RuntimeError("x")) == cli.EXIT_INTERNAL == 1
    assert cli.error_line(KeyError("no such key")) == "no such key"
    assert cli.error_line(ValueError("first\n  second\n")) == "first; second"
