"""Seq2seq evaluation throughput: examples/s of the batched, jitted decoding of a
split at CNN/DailyMail lengths (issue 16; spec 4.4).

    python benchmarks/seq2seq_eval.py [--examples 16] [--batch 4 16] [--repeats 2]

A small GLM at random init (hidden 256, 4 layers, vocabulary 8192) on JAX's
default device, rows of 608 source tokens (random ids, as the official
``Seq2SeqDataset`` lays them out), decoded by ``glm_jax.seq2seq_finetune.generate``,
the function fine-tuning and ``glm-jax eval`` call, with the settings of
configs/finetune/cnn_dm.yaml (beam 5, up to 160 tokens, at least 55, no repeated
trigram, length penalty 0.7), and greedy for comparison. A random model seldom
ends early, so most rows run the full 160 steps: the figures are close to the
worst case per example. Times are medians over ``--repeats`` passes after one
compile pass; the mean generated length is reported beside them. Results are
printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from decoding import CONFIG, CT, append_results, load_average, machine  # benchmarks/decoding.py
from glm_jax import sharding
from glm_jax.data import seq2seq
from glm_jax.model import GLM
from glm_jax.seq2seq_finetune import Seq2SeqConfig, generate

SRC, TGT = 608, 160


def rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        article = [int(t) for t in rng.integers(0, 8000, SRC)]
        out.append(seq2seq.seq2seq_row(seq2seq.summary_source(article, [11, 12], SRC, CT), None, SRC, TGT, CT))
    batch = {k: np.stack([r[k] for r in out]) for k in ("tokens", "position_ids", "block_position_ids")}
    batch["example_id"] = np.arange(n, dtype=np.int32)
    return batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    load_before = load_average()
    z = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(jax.jit(lambda: GLM(CONFIG).init(jax.random.PRNGKey(0), z, z, z, sep=z[:, 0])["params"])())
    mesh = sharding.mesh_from_config(sharding.MeshConfig(), devices=jax.devices()[:1])
    data = rows(args.examples)
    beam = Seq2SeqConfig(src_length=SRC, tgt_length=TGT, min_tgt_length=55, num_beams=5, length_penalty=0.7,
                         no_repeat_ngram_size=3)
    greedy = Seq2SeqConfig(src_length=SRC, tgt_length=TGT, min_tgt_length=55, num_beams=1, no_repeat_ngram_size=3)
    results = []
    for name, cfg in (("beam 5", beam), ("greedy", greedy)):
        for batch in args.batch:
            batches = [{k: v[i:i + batch] for k, v in data.items()} for i in range(0, args.examples, batch)]

            def run():
                return generate(params, batches, model_config=CONFIG, settings=cfg.decode_settings(),
                                command_tokens=CT, src_length=SRC, mesh=mesh)

            start = time.perf_counter()
            out = run()
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            length = float(np.mean([len(v) for v in out.values()]))
            results.append((name, batch, args.examples / seconds, length * args.examples / seconds, length, first))
            print(f"{name}, batch {batch}: {args.examples / seconds:.2f} examples/s "
                  f"({length * args.examples / seconds:.0f} generated tokens/s, mean length {length:.0f}); "
                  f"first pass with compilation {first:.1f} s", flush=True)
    lines = [
        f"\n## Seq2seq evaluation throughput ({datetime.date.today()}, `python benchmarks/seq2seq_eval.py "
        f"{' '.join(sys.argv[1:])}`)\n",
        f"{machine(load_before)}. GLM hidden {CONFIG.hidden_size}, {CONFIG.num_layers} layers, vocabulary "
        f"{CONFIG.vocab_size}, random init, fp32; {args.examples} rows of {SRC} source tokens, up to {TGT} "
        "generated, at least 55, no repeated trigram (configs/finetune/cnn_dm.yaml); median of "
        f"{args.repeats} passes after a compile pass.\n",
        "| decoding | batch | examples/s | generated tokens/s | mean length | first pass (compile) s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {b} | {e:.2f} | {t:.0f} | {m:.0f} | {f:.1f} |" for n, b, e, t, m, f in results]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
