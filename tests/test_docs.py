"""Every code block of README.md and docs/*.md is checked against the code it shows.

* Each ``glm-jax ...`` command (bash blocks, and ``$ glm-jax ...`` lines of printed
  sessions) must parse with the real CLI parser; when its ``--config`` names a
  shipped config, that config must load with the command's ``key=value``
  overrides (unknown keys and bad values fail here, as they would for the user).
* Each python block must parse, and every ``glm_jax`` name it imports or reads
  from an imported ``glm_jax`` module must exist.
* Each yaml block must be valid for a config class (and equal the shipped file it
  names); each json block must be JSON.
* Each ``<!-- docs: ... -->`` marker must be well formed (tests/test_docs_run.py runs
  every bash and python block that has none).

Blocks marked as not runnable here (pod commands, released weights, the user's
files) are only checked here.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import seqio

from conftest import REPO
from glm_jax import cli
from glm_jax import config as config_lib
from glm_jax import typed_config
from glm_jax.data.tokenizers import TokenizerConfig
from glm_jax.finetune import FinetuneRunConfig

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Commands whose --config is a run config of `train` / `compile` (a finetune config needs a model directory).
RUN_CONFIG_COMMANDS = ("train", "compile")


# The comment on the line before a block says how CI treats it (unmarked bash and python
# blocks run: tests/test_docs_run.py):
FAILS_ON_PURPOSE = "<!-- docs: these commands fail on purpose -->"
MARKER = re.compile(r"^<!-- docs: (not run here|run by): (.+?) -->$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str
    comment: str = ""  # the line before the block, when it is an HTML comment

    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def fails_on_purpose(self) -> bool:
        return self.comment == FAILS_ON_PURPOSE


def marker_of(block: Block) -> tuple[str, str] | None:
    """("not run here", reason), ("run by", "tests/FILE.py::TEST") or None."""
    match = MARKER.match(block.comment)
    return (match.group(1), match.group(2)) if match else None


def code_blocks(path) -> list[Block]:
    text = path.read_text()
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        line = text[: match.start()].count("\n") + 1
        before = text[: match.start()].rstrip().splitlines()[-1:] or [""]
        comment = before[0].strip() if before[0].strip().startswith("<!--") else ""
        out.append(Block(path.relative_to(REPO).as_posix(), line, match.group(1), match.group(2), comment))
    return out


def glm_jax_commands(block: Block) -> list[str]:
    """The ``glm-jax`` invocations of a block: continuation lines joined, ``$``
    prompts, ``&&`` chains and trailing comments handled."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    commands = []
    for raw in joined.splitlines():
        line = raw.strip()
        if block.lang != "bash" and not line.startswith("$ "):
            continue  # printed output, not a command
        line = line[2:] if line.startswith("$ ") else line
        for part in re.split(r"&&|;", line):
            part = re.split(r"\s+#", part)[0].strip()
            part = re.sub(r"^(\w+=\S*\s+)+", "", part)  # environment settings: XLA_FLAGS=... glm-jax
            part = re.sub(r"\\?\$\w+", "0", part).removesuffix("&").strip()  # a loop's `--process-id=$i &`
            if part.startswith(("glm-jax ", ".venv/bin/glm-jax ")):
                commands.append(part)
    return commands


def command_problems(command: str) -> list[str]:
    argv = shlex.split(command)[1:]
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return [f"does not parse: {command}"]
    if "..." in argv:
        return []  # an elided command (`glm-jax train ... train.steps=6`): its options parse
    if args.command in RUN_CONFIG_COMMANDS and getattr(args, "config", None):
        try:
            config_lib.find_config(args.config)
        except FileNotFoundError:
            return []  # the user's own file
        try:
            config_lib.load_config(args.config, list(args.overrides))
        except (ValueError, TypeError, FileNotFoundError) as e:
            return [f"its config does not load ({e}): {command}"]
    return []


def python_problems(source: str) -> list[str]:
    """Names a snippet takes from glm_jax that do not exist (or a syntax error)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"not valid Python: {e}"]
    problems, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("glm_jax"):
                    try:
                        module = importlib.import_module(alias.name)
                    except ImportError as e:
                        problems.append(f"import {alias.name}: {e}")
                        continue
                    if alias.asname:
                        modules[alias.asname] = module
                    else:
                        modules.setdefault("glm_jax", importlib.import_module("glm_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glm_jax"):
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                problems.append(f"from {node.module}: {e}")
                continue
            for alias in node.names:
                try:
                    value = getattr(module, alias.name) if hasattr(module, alias.name) else importlib.import_module(
                        f"{node.module}.{alias.name}")
                except ImportError:
                    problems.append(f"from {node.module} import {alias.name}: no such name")
                    continue
                if hasattr(value, "__name__") and getattr(value, "__spec__", None) is not None:
                    modules[alias.asname or alias.name] = value  # a module: check what is read from it
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            module = modules[node.value.id]
            if not hasattr(module, node.attr):
                try:
                    importlib.import_module(f"{module.__name__}.{node.attr}")
                except ImportError:
                    problems.append(f"{module.__name__}.{node.attr}: no such name")
    return problems


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if glm_jax_commands(b)], ids=Block.where)
def test_every_glm_jax_command_in_the_docs_parses(block):
    if block.fails_on_purpose:  # the error examples: each must still fail (unless it reads the user's file)
        for command in glm_jax_commands(block):
            if "/tmp/" not in command:
                assert command_problems(command), f"{block.where()}: meant to fail, but loads: {command}"
        return
    problems = [p for command in glm_jax_commands(block) for p in command_problems(command)]
    assert not problems, f"{block.where()}: " + "; ".join(problems)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=Block.where)
def test_every_python_snippet_in_the_docs_names_real_code(block):
    problems = python_problems(block.text)
    assert not problems, f"{block.where()}: " + "; ".join(problems)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.comment.startswith("<!-- docs")], ids=Block.where)
def test_every_docs_marker_is_well_formed_and_names_real_tests(block):
    """A block is run by tests/test_docs_run.py unless marked: "not run here" with a
    reason, or "run by" a test that exists and reads that page."""
    if block.fails_on_purpose:
        assert block.lang not in ("bash", "python"), f"{block.where()}: error examples are printed sessions"
        return
    marker = marker_of(block)
    assert marker, f"{block.where()}: unknown docs marker {block.comment!r}"
    kind, detail = marker
    assert block.lang in ("bash", "python"), f"{block.where()}: only bash and python blocks run"
    if kind == "run by":
        path, _, name = detail.partition("::")
        tree = ast.parse((REPO / path).read_text())
        test = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
        assert test is not None, f"{block.where()}: {detail} does not exist"
        assert Path(block.page).name in ast.get_source_segment((REPO / path).read_text(), test), (
            f"{block.where()}: {detail} does not read {block.page}")


def data_block_problems(block: Block) -> list[str]:
    """A yaml block: valid YAML 1.2 that a config class takes (a whole file when its
    first line names one under configs/: then equal to that file); json: valid JSON."""
    if block.lang == "json":
        try:
            json.loads(block.text)
        except ValueError as e:
            return [f"not JSON: {e}"]
        return []
    try:
        data = typed_config.parse_yaml(block.text, block.where())
    except typed_config.ConfigError as e:
        return [str(e)]
    named = re.match(r"# (configs/\S+\.yaml)", block.text)
    if named:
        shipped = typed_config.parse_yaml((REPO / named.group(1)).read_text(), named.group(1))
        return [] if shipped == data else [f"differs from {named.group(1)}: {data} vs {shipped}"]
    for cls in (config_lib.Config, FinetuneRunConfig, TokenizerConfig):
        try:
            typed_config.check(cls, data, where=block.where(), presets=config_lib.SECTION_PRESETS)
            return []
        except typed_config.ConfigError:
            continue
    return [f"no config class takes {sorted(data)}"]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in ("yaml", "json")], ids=Block.where)
def test_every_yaml_and_json_block_is_valid_config_or_data(block):
    problems = data_block_problems(block)
    assert not problems, f"{block.where()}: " + "; ".join(problems)


def test_the_checks_catch_a_broken_example():
    """Breaking an example on purpose fails: a renamed function, an unknown option, an
    unknown config key."""
    assert python_problems("from glm_jax.decoding import infill_txt\n")
    assert python_problems("from glm_jax import text_metrics\ntext_metrics.rogue([], [])\n")
    assert command_problems("glm-jax generate --checkpoint d --beam-width 4 'a [MASK]'")
    assert command_problems("glm-jax train train.stepz=3")
    assert not command_problems("glm-jax train train.steps=3")
    assert data_block_problems(Block("p.md", 1, "yaml", "mesh:\n  ici_shap: [1, -1, 1]\n"))
    assert data_block_problems(Block("p.md", 1, "yaml", "# configs/pretrain/glm_10b_2x_tpu_v5p_128.yaml\nbase: x\n"))
    assert not data_block_problems(Block("p.md", 1, "yaml", "seq2seq:\n  num_beams: 4\n"))
    assert len(ALL_BLOCKS) > 100 and sum(b.lang == "python" for b in ALL_BLOCKS) >= 20


def test_the_sharding_table_of_scaling_md_is_what_its_snippet_prints(capsys):
    """docs/scaling.md prints the parameter layout of glm_tiny on a (1, 4, 2) mesh;
    its snippet runs here (8 simulated devices) and prints every line shown."""
    blocks = code_blocks(REPO / "docs" / "scaling.md")
    snippet = next(b for b in blocks if b.lang == "python" and "params_layout" in b.text)
    shown = blocks[blocks.index(snippet) - 1]
    exec(compile(snippet.text, snippet.where(), "exec"), {})
    printed = {" ".join(line.split()) for line in capsys.readouterr().out.splitlines()}
    for line in shown.text.splitlines():
        assert " ".join(line.split()) in printed, line



def test_the_custom_task_snippet_of_data_md_prints_what_the_page_shows(tmp_path, monkeypatch, capsys):
    """docs/data.md's custom seqio task: its two input lines, its snippet, its output."""
    blocks = code_blocks(REPO / "docs" / "data.md")
    snippet = next(b for b in blocks if b.lang == "python" and "my_short_span_task" in b.text)
    inputs, shown = blocks[blocks.index(snippet) + 1], blocks[blocks.index(snippet) + 2]
    for name in ("train.txt", "validation.txt"):
        (tmp_path / name).write_text(inputs.text)
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(snippet.text, snippet.where(), "exec"), {})
    finally:
        seqio.TaskRegistry.remove("my_short_span_task")
    assert capsys.readouterr().out.splitlines() == shown.text.splitlines()
