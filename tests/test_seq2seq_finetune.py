"""Seq2seq evaluation decoding (glm_jax/seq2seq_finetune.py): the batched decoder of
a split gives what decoding each example alone gives, sharded or not; the
``seq2seq`` config section checks its values and maps to the official decoding."""

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from glm_jax import decoding, sharding, train_state
from glm_jax.command_tokens import CommandTokens
from glm_jax.data import seq2seq
from glm_jax.model import GLM, ModelConfig
from glm_jax.seq2seq_finetune import Seq2SeqConfig, generate

CT = CommandTokens(pad=100, eos=100, cls=101, mask=102, sop=103, eop=110, unk=105)
CONFIG = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32)
SRC, TGT = 12, 6


@pytest.fixture(scope="module")
def params():
    z = jnp.zeros((1, 8), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(lambda: GLM(CONFIG).init(jax.random.PRNGKey(0), z, z, z, sep=z[:, 0])["params"]))
    rng = np.random.default_rng(3)

    def draw(path, shape):
        name = path[-1].key
        if name in ("scale", "bias"):
            return np.full(shape.shape, 1.0 if name == "scale" else 0.0, np.float32)
        return (0.3 * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def rows(n: int) -> dict[str, np.ndarray]:
    """``n`` summary rows with sources of different lengths (padded inside Part A)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        article = [int(t) for t in rng.integers(0, 100, 2 + i % 7)]
        out.append(seq2seq.seq2seq_row(seq2seq.summary_source(article, [7, 8], SRC, CT), [1, 2, 3], SRC, TGT, CT))
    batch = {k: np.stack([r[k] for r in out]) for k in ("tokens", "position_ids", "block_position_ids")}
    batch["example_id"] = np.arange(n, dtype=np.int32)
    return batch


@pytest.mark.parametrize("num_beams", [1, 3])
def test_split_decoding_equals_decoding_each_example_alone(params, num_beams):
    settings = Seq2SeqConfig(src_length=SRC, tgt_length=TGT, num_beams=num_beams, length_penalty=0.7,
                             no_repeat_ngram_size=2).decode_settings()
    batch = rows(5)
    single = sharding.mesh_from_config(sharding.MeshConfig(), devices=jax.devices()[:1])
    got = generate(params, [batch], model_config=CONFIG, settings=settings, command_tokens=CT, src_length=SRC,
                   mesh=single, total=None)
    for i in range(5):
        context = batch["tokens"][i, :SRC].tolist()  # Part A with its padding, as upstream decodes it
        [alone] = decoding.generate(params, CONFIG, [context], CT, settings)
        assert got[i] == [t for t in alone.tokens if t not in (CT.eop, CT.pad)], i
    assert any(len(v) > 0 for v in got.values())


def test_sharded_decoding_equals_one_device(params, capsys):
    settings = Seq2SeqConfig(src_length=SRC, tgt_length=TGT, num_beams=2).decode_settings()
    batch = rows(5)  # 5 rows: padded to 8 for the 8-way batch sharding
    single = sharding.mesh_from_config(sharding.MeshConfig(), devices=jax.devices()[:1])
    mesh = sharding.mesh_from_config(sharding.MeshConfig())
    assert mesh.shape["fsdp"] == 8
    _, shardings = train_state.params_layout(CONFIG, mesh)
    sharded_params = jax.device_put(params, shardings)
    lines = []
    got = generate(sharded_params, [batch], model_config=CONFIG, settings=settings, command_tokens=CT,
                   src_length=SRC, mesh=mesh, total=5, print_fn=lines.append)
    want = generate(params, [batch], model_config=CONFIG, settings=settings, command_tokens=CT, src_length=SRC,
                    mesh=single)
    assert got == want and sorted(got) == [0, 1, 2, 3, 4]
    assert len(lines) == 1 and lines[0].startswith("decoding: 5/5 examples, ") and "ETA 0 s" in lines[0]


def test_config_maps_to_the_official_decoding_and_rejects_bad_values():
    s = Seq2SeqConfig(src_length=608, tgt_length=160, min_tgt_length=55, num_beams=5, length_penalty=0.7,
                      no_repeat_ngram_size=3).decode_settings()
    assert (s.strategy, s.num_beams, s.max_new_tokens, s.min_length, s.length_penalty, s.no_repeat_ngram_size,
            s.beam_sample) == ("beam", 5, 160, 55, 0.7, 3, False)
    assert Seq2SeqConfig(num_beams=5, select_topk=False).decode_settings().beam_sample
    assert Seq2SeqConfig(num_beams=1).decode_settings().strategy == "greedy"
    with pytest.raises(ValueError, match=r"seq2seq.label_smoothing must be in \[0, 1\), got 1.0"):
        Seq2SeqConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="seq2seq.min_tgt_length=64 must be below seq2seq.tgt_length=64"):
        Seq2SeqConfig(min_tgt_length=64)
    with pytest.raises(ValueError, match="seq2seq.num_beams"):
        Seq2SeqConfig(num_beams=0)
