"""Every bash and python block of README.md and docs/*.md that is not marked
``<!-- docs: not run here: REASON -->`` or ``<!-- docs: run by tests/FILE.py::TEST -->``
runs here, page by page, as a reader would run it (slow: CI's slow step).

How a page runs, in order of its blocks, in a fresh folder of its own:

* The folder holds what the pages assume exists (:func:`seed_sandbox`):
  ``runs/embedded_default`` (a trained run of the embedded default: model, logs,
  checkpoints) unless the page trains it itself, and small stand-ins for the user's
  data at the paths the pages name: ``data/superglue/RTE`` and ``data/xsum``.
* Sizes shrink by appending config overrides to each ``glm-jax train`` and
  ``glm-jax finetune`` (:data:`SHRINK`: two training steps, one epoch); the last value
  of a key wins, so every other key of the command is used as written.
* A bash block of ``glm-jax`` commands runs them in this process (``cli.main``, the
  console script's function); any other bash block runs in ``bash -e`` with a
  ``glm-jax`` on ``PATH`` that appends the same overrides. The README's set-up prefix
  (``python3 -m venv .venv && .venv/bin/pip install -e .``) is the environment these
  tests run in; ``.venv/bin/glm-jax`` is ``glm-jax``.
* Python blocks run in one namespace per page, like a notebook's cells. A block whose
  first line is ``# NAME.py`` is a file the page tells the reader to write: it is
  written, then run by the page's ``python NAME.py`` line, or executed in place if
  the page has none (modules that register tasks).

Every command must exit 0 (those marked to fail on purpose are text blocks, checked by
tests/test_docs.py). Printed numbers of training runs are not compared (the pages
print full-size runs); outputs a page's run reproduces exactly are (:data:`OUTPUT_CHECKS`;
tests/test_docs.py has two more).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import seqio

from conftest import REPO
from glm_jax import cli
from test_docs import ALL_BLOCKS, PAGES, Block, marker_of

pytestmark = pytest.mark.slow

#: Appended to every `glm-jax COMMAND` of the pages (the last value of a key wins).
SHRINK: dict[str, list[str]] = {
    "train": ["train.steps=2", "train.log_every=1", "train.eval_every=2", "train.eval_batches=1",
              "train.global_batch_size=8", "optimizer.warmup_steps=1", "optimizer.decay_steps=2",
              "checkpoint.save_interval_steps=2"],
    "finetune": ["finetune.epochs=1"],
}
SETUP = re.compile(r"^(python3 -m venv \.venv|\.venv/bin/pip install -e \S+)$")
MODULE_FILE = re.compile(r"^# (\w+\.py)\b")


def runnable(block: Block) -> bool:
    return block.lang in ("bash", "python") and marker_of(block) is None


def logical_lines(text: str) -> list[str]:
    """The block's commands: continuation lines joined, ``&&`` chains split, comments
    and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for raw in joined.splitlines():
        line = re.split(r"(?:^|\s)#\s", raw)[0]
        lines += [part.strip() for part in line.split(" && ") if part.strip()]
    return lines


def glm_jax_argv(line: str) -> list[str] | None:
    """``glm-jax ARGS`` (or ``.venv/bin/glm-jax ARGS``) as an argv; None for any other line."""
    for prefix in ("glm-jax ", ".venv/bin/glm-jax "):
        if line.startswith(prefix) or line == prefix.strip():
            return shlex.split(line)[1:]
    return None


def shrunk(argv: list[str]) -> list[str]:
    return [*argv, *SHRINK.get(argv[0], [])] if argv else argv


def trains_the_default(block: Block) -> bool:
    return block.lang == "bash" and any(glm_jax_argv(line) == ["train"] for line in logical_lines(block.text))


# ------------------------------------------------------------------ the sandbox


def write_superglue_rte(root: Path, n_train: int = 32, n_val: int = 16) -> None:
    """A learnable toy RTE in the SuperGLUE jsonl layout (the page's own data is the user's)."""
    rng = random.Random(0)
    (root / "RTE").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        with open(root / "RTE" / f"{split}.jsonl", "w") as f:
            for idx in range(n):
                yes = rng.random() < 0.5
                row = {"premise": f"The module number {idx} was imported.",
                       "hypothesis": f"The module was {'imported' if yes else 'deleted'}.", "idx": idx}
                if split != "test":
                    row["label"] = "entailment" if yes else "not_entailment"
                f.write(json.dumps(row) + "\n")


def write_xsum(root: Path) -> None:
    """XSum's file layout ({train,val,test}.source/.target, one article per line), toy text."""
    root.mkdir(parents=True, exist_ok=True)
    words = "list tuple dict set string file module class function loop".split()
    rng = random.Random(1)
    for split, n in (("train", 16), ("val", 4), ("test", 4)):
        sources, targets = [], []
        for _ in range(n):
            topic = rng.choice(words)
            sources.append(f"A {topic} is used in the program. The {topic} holds the values the code reads "
                           f"and writes. Every {topic} has a length.")
            targets.append(f"the program uses a {topic} .")
        (root / f"{split}.source").write_text("\n".join(sources) + "\n")
        (root / f"{split}.target").write_text("\n".join(targets) + "\n")


def seed_sandbox(folder: Path, trained_run: Path | None) -> None:
    if trained_run is not None:
        shutil.copytree(trained_run, folder / "runs" / "embedded_default")
    write_superglue_rte(folder / "data" / "superglue")
    write_xsum(folder / "data" / "xsum")


def write_shims(folder: Path) -> Path:
    """``glm-jax`` (the shrinking one) and ``python`` for the page's shell lines."""
    bin_dir = folder / ".docs_bin"
    bin_dir.mkdir()
    shim = bin_dir / "glm-jax"
    shim.write_text(
        f"#!{sys.executable}\nimport sys\nfrom glm_jax import cli\n"
        f"SHRINK = {SHRINK!r}\nargv = sys.argv[1:]\n"
        "sys.exit(cli.main([*argv, *SHRINK.get(argv[0] if argv else '', [])]))\n"
    )
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "python").symlink_to(sys.executable)
    return bin_dir


@pytest.fixture(scope="module")
def trained_default(tmp_path_factory) -> Path:
    """`glm-jax train` of the embedded default, shrunk: the pages' runs/embedded_default."""
    run = tmp_path_factory.mktemp("default_run") / "embedded_default"
    assert cli.main(shrunk(["train", f"train.output_dir={run}"])) == 0
    return run


# ------------------------------------------------------------------ running a page


def run_bash(block: Block, folder: Path, bin_dir: Path) -> None:
    lines = logical_lines(block.text)
    argvs = [glm_jax_argv(line) for line in lines]
    setup_only = [bool(SETUP.match(line)) for line in lines]
    if all(a is not None or s for a, s in zip(argvs, setup_only)):
        for line, argv in zip(lines, argvs):
            if argv is None:
                continue  # the set-up line: this environment
            rc = cli.main(shrunk(argv))
            assert rc == 0, f"{block.where()}: exit {rc}: {line}"
        return
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-c", block.text], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (
        f"{block.where()}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def run_python(block: Block, folder: Path, namespace: dict, page_blocks: list[Block]) -> None:
    first = block.text.splitlines()[0]
    module_file = MODULE_FILE.match(first)
    if module_file:
        name = module_file.group(1)
        (folder / name).write_text(block.text)
        later = [b for b in page_blocks[page_blocks.index(block) + 1:] if b.lang == "bash"]
        if any(re.search(rf"\bpython3? {re.escape(name)}\b", b.text) for b in later):
            return  # the page runs it
    exec(compile(block.text, block.where(), "exec"), namespace)


def check_how_glm_works(text: str, namespace: dict) -> None:
    """The page's token table is the row its snippet builds: ``sep`` and, for every
    single-position row of the table, loss_mask, position_ids and block_position_ids."""
    example = namespace["example"]
    assert f"has `sep = {int(example['sep'])}`" in text
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| [^|]+ \| (\d) \| (\d+) \| (\d+) \|", text, re.M)
    assert len(rows) >= 15
    for t, loss, position, block in rows:
        t = int(t)
        got = (int(example["loss_mask"][t]), int(example["position_ids"][t]), int(example["block_position_ids"][t]))
        assert got == (int(loss), int(position), int(block)), (
            f"docs/how_glm_works.md, row t = {t}: page {loss, position, block}, run {got}")


#: Outputs a page prints that its run reproduces exactly, checked after the page ran.
OUTPUT_CHECKS = {"docs/how_glm_works.md": check_how_glm_works}


def registered() -> tuple[set[str], set[str]]:
    return set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())


PAGES_THAT_RUN = [p.relative_to(REPO).as_posix() for p in PAGES
                  if any(runnable(b) for b in ALL_BLOCKS if b.page == p.relative_to(REPO).as_posix())]


@pytest.mark.parametrize("page", PAGES_THAT_RUN)
def test_the_page_runs_as_written(page, tmp_path, monkeypatch, trained_default):
    blocks = [b for b in ALL_BLOCKS if b.page == page]
    to_run = [b for b in blocks if runnable(b)]
    seed_sandbox(tmp_path, None if any(trains_the_default(b) for b in to_run) else trained_default)
    bin_dir = write_shims(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the page's own modules (`import my_tasks`)
    monkeypatch.syspath_prepend(str(REPO))  # `import tasks`, as from a checkout
    tasks_before, mixtures_before = registered()
    namespace: dict = {"__name__": "__docs__"}
    try:
        for block in to_run:
            if block.lang == "bash":
                run_bash(block, tmp_path, bin_dir)
            else:
                run_python(block, tmp_path, namespace, blocks)
        if page in OUTPUT_CHECKS:
            OUTPUT_CHECKS[page]((REPO / page).read_text(), namespace)
    finally:
        tasks_after, mixtures_after = registered()
        for name in mixtures_after - mixtures_before:
            seqio.MixtureRegistry.remove(name)
        for name in tasks_after - tasks_before:
            seqio.TaskRegistry.remove(name)

