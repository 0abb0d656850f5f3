"""Throughput of the GLM pretraining data pipeline, per CPU core.

Pipeline: synthetic tokenized documents -> glm_jax.data.windows.document_windows ->
glm_jax.data.objectives.blank_infilling -> glm_jax.data.feature_converter.GLMFeatureConverter
(padded or packed) -> batches. tf.data runs on one thread (private thread pool of
size 1, no intra-op parallelism), so the rates are per core; the CPU time of the
whole process (the iterating Python thread included) is reported too, as
examples per CPU-second, which stays meaningful on a shared machine.

    python benchmarks/data_pipeline.py                       # print the table
    python benchmarks/data_pipeline.py --append benchmarks/RESULTS.md

Documents have log-normal lengths (median ~400 tokens), ids 10..V-1; 5% of the
ids end a sentence. Command ids 0..9.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from glm_jax.command_tokens import CommandTokens  # noqa: E402
from glm_jax.data import objectives, windows  # noqa: E402
from glm_jax.data.feature_converter import GLMFeatureConverter  # noqa: E402

COMMAND_TOKENS = CommandTokens(pad=0, eos=1, cls=2, mask=3, sop=4, eop=5, unk=6, smask=7, gmask=8, dblock=9)
VOCAB = 50_000
CONFIGS = {
    "token": objectives.GLM_BASE,
    "sentence": objectives.ObjectiveConfig(token_prob=0.0, sentence_prob=1.0),
    "document": objectives.ObjectiveConfig(token_prob=0.0, document_prob=1.0),
    "multitask": objectives.GLM_10B,  # 0.5 / 0.3 / 0.2, task masks, [dBLOCK]
}


def synthetic_documents(num_docs: int, seed: int = 0) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, num_docs), 1, 20_000).astype(np.int64)
    tokens = rng.integers(10, VOCAB, lengths.sum()).astype(np.int32)
    ragged = tf.RaggedTensor.from_row_lengths(tokens, lengths)
    return tf.data.Dataset.from_tensor_slices({"targets": ragged}).repeat()


def pipeline(
    objective: str, seq_len: int, pack: bool, batch_size: int, sentence_end: np.ndarray
) -> tf.data.Dataset:
    lengths = {"tokens": seq_len}
    ds = windows.document_windows(synthetic_documents(20_000), lengths, command_tokens=COMMAND_TOKENS)
    with seqio.map_seed_manager(0):
        ds = objectives.blank_infilling(
            ds, lengths, command_tokens=COMMAND_TOKENS, config=CONFIGS[objective], sentence_end=sentence_end
        )
    ds = GLMFeatureConverter(pack=pack, command_tokens=COMMAND_TOKENS)(ds, lengths)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = 1
    return ds.batch(batch_size).with_options(options)


def measure(ds: tf.data.Dataset, seconds: float, warmup_batches: int = 5) -> dict[str, float]:
    """Rows, examples and tokens per wall-second and per CPU-second."""
    it = ds.as_numpy_iterator()
    for _ in range(warmup_batches):  # tracing and the first windows
        next(it)
    rows = examples = tokens = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        batch = next(it)
        rows += len(batch["tokens"])
        if "segment_ids" in batch:
            examples += int(batch["segment_ids"].max(axis=1).sum())
            tokens += int((batch["segment_ids"] > 0).sum())
        else:
            examples += len(batch["tokens"])
            tokens += int((batch["tokens"] != COMMAND_TOKENS.pad).sum())  # text ids are never 0
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "examples_per_s": examples / wall,
        "rows_per_s": rows / wall,
        "examples_per_cpu_s": examples / cpu,
        "fill": tokens / (rows * batch["tokens"].shape[1]),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per configuration (median kept)")
    parser.add_argument("--objectives", default=",".join(CONFIGS))
    parser.add_argument("--append", help="append the table to this markdown file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(1)
    sentence_end = np.zeros(VOCAB, bool)
    sentence_end[rng.choice(np.arange(10, VOCAB), VOCAB // 20, replace=False)] = True

    load_before = os.getloadavg()[0]
    header = "| objective | packed | examples/s (1 core) | rows/s | examples per CPU-second | row fill |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    print(header)
    for objective in args.objectives.split(","):
        for pack in (False, True):
            ds = pipeline(objective, args.seq_len, pack, args.batch_size, sentence_end)
            runs = [measure(ds, args.seconds) for _ in range(args.repeats)]
            r = {k: float(np.median([run[k] for run in runs])) for k in runs[0]}
            line = (
                f"| {objective} | {'yes' if pack else 'no'} | {r['examples_per_s']:.0f} | {r['rows_per_s']:.0f} "
                f"| {r['examples_per_cpu_s']:.0f} | {r['fill']:.1%} |"
            )
            lines.append(line)
            print(line, flush=True)

    if args.append:
        new_file = not os.path.exists(args.append)
        with open(args.append, "a") as f:
            if new_file:
                f.write("# glm-jax benchmark results\n\n")
                f.write("Each section is appended by the benchmark script it names.\n")
            f.write(
                f"\n## Data pipeline: GLM examples per second per CPU core, T = {args.seq_len}\n\n"
                f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n"
                f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
                f"TensorFlow {tf.__version__}, seqio {seqio.__version__}\n"
                f"- command: `python benchmarks/data_pipeline.py {' '.join(argv)}`\n"
                f"- tf.data on one thread, batch {args.batch_size}, "
                f"median of {args.repeats} x {args.seconds:.0f} s; "
                f"the machine was shared (load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after), "
                "so the CPU-second column is the steadier one\n\n"
                + "\n".join(lines)
                + "\n"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
