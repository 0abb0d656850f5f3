"""glm_jax.model_dir: the config.yaml + orbax params directory, and its tokenizer.yaml."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from glm_jax.model import ModelConfig
from glm_jax.data.tokenizers import DEFAULT_TASK_MASK, VOCAB_FILE, TokenizerConfig, tokenizer_of
from glm_jax.model_dir import (
    CONFIG_FILE,
    PARAMS_DIR,
    TOKENIZER_FILE,
    abstract_params,
    load_model_dir,
    load_vocabulary,
    read_config,
    read_tokenizer,
    replace_model_dir,
    save_model_dir,
)
from glm_jax.data.official_vocabs import official_vocabulary
from glm_jax.data.official_vocabs.tiny import write_tiny_files
from glm_jax.data.vocab import GLMVocabulary

CONFIG = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16,
                     intermediate_size=48, activation="gelu_exact", hidden_dropout=0.0)


def random_params(config: ModelConfig) -> dict:
    """Distinct random float32 values in every leaf of ``GLM(config)``'s params tree."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract_params(config))


def assert_trees_equal(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), e)


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_is_bit_exact(tmp_path, scan):
    config = CONFIG.replace(scan_layers=scan)
    params = random_params(config)
    save_model_dir(tmp_path / "model", config, params)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [CONFIG_FILE, PARAMS_DIR]
    loaded_config, loaded = load_model_dir(tmp_path / "model")
    assert loaded_config == config
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded, params)


def test_load_with_shardings_gives_jax_arrays(tmp_path):
    params = random_params(CONFIG)
    save_model_dir(tmp_path / "model", CONFIG, params)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _, loaded = load_model_dir(tmp_path / "model", shardings=jax.tree.map(lambda _: sharding, params))
    assert all(isinstance(x, jax.Array) and x.sharding == sharding for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded, params)


def test_refuses_non_empty_directory(tmp_path):
    params = random_params(CONFIG)
    (tmp_path / "empty").mkdir()
    save_model_dir(tmp_path / "empty", CONFIG, params)  # an empty directory is fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=f"output directory {tmp_path / 'full'} is not empty"):
        save_model_dir(tmp_path / "full", CONFIG, params)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_model_dir(tmp_path / "file", CONFIG, params)


def test_params_that_do_not_match_config_are_refused(tmp_path):
    params = random_params(CONFIG)
    params["layers_1"]["attention"]["dense"]["kernel"] = np.zeros((4, 8, 33), np.float32)
    message = r"layers_1/attention/dense/kernel: expected float32\[4, 8, 32\], got float32\[4, 8, 33\]"
    with pytest.raises(ValueError, match=message):
        save_model_dir(tmp_path / "a", CONFIG, params)
    # Unscanned params with a scan_layers config: every path is named.
    with pytest.raises(ValueError, match=r"(?s)missing layers/attention.*unexpected layers_0/"):
        save_model_dir(tmp_path / "b", CONFIG.replace(scan_layers=True), random_params(CONFIG))
    bf16 = jax.tree.map(lambda x: x.astype("bfloat16"), random_params(CONFIG))
    with pytest.raises(ValueError, match=r"final_layernorm/bias: expected float32\[32\], got bfloat16\[32\]"):
        save_model_dir(tmp_path / "c", CONFIG, bf16)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing half-written


def test_config_yaml_errors_name_the_key(tmp_path):
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG))
    path = tmp_path / "model" / CONFIG_FILE
    text = path.read_text()
    assert "hidden_size: 32\n" in text and "intermediate_size: 48\n" in text
    assert read_config(path) == CONFIG

    path.write_text(text + "hiden_size: 64\n")
    with pytest.raises(ValueError, match=r"config\.yaml: unknown key 'hiden_size'"):
        load_model_dir(tmp_path / "model")
    path.write_text(text.replace("num_layers: 2", "num_layers: two"))
    with pytest.raises(ValueError, match=r"config\.yaml: num_layers: expected int, got str 'two'"):
        load_model_dir(tmp_path / "model")
    path.write_text(text.replace("num_layers: 2", "num_layers: 3"))
    with pytest.raises(ValueError, match=r"params stored in .* do not match the config.*\n.*missing layers_2/"):
        load_model_dir(tmp_path / "model")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="is not a glm-jax model directory"):
        load_model_dir(tmp_path / "model")


# ----------------------------------------------------------------------------- tokenizer.yaml


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    """Tiny tokenizer files of every official kind, 100 entries each: padded to 128,
    CONFIG's vocab_size, by the official rule."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: write_tiny_files(kind, root / kind, num_tokens=100) for kind in ("bert", "gpt2", "roberta", "chinese")}


STORED = {
    "bert": ["vocab.txt"],
    "gpt2": ["merges.txt", "vocab.json"],
    "roberta": ["merges.txt", "vocab.json"],
    "chinese": ["cog-pretrain.model"],
}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "chinese"])
def test_official_tokenizer_is_recorded_and_reloaded(tmp_path, tiny_files, kind):
    files = tiny_files[kind]
    fix = True if kind == "chinese" else None
    tokenizer = TokenizerConfig(kind=kind, vocab_file=str(files["vocab_file"]), fix_command_token=fix)
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG), tokenizer=tokenizer)
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == sorted([CONFIG_FILE, PARAMS_DIR, TOKENIZER_FILE, *STORED[kind]])

    record = read_tokenizer(tmp_path / "model")
    assert record.kind == kind and record.vocab_file == STORED[kind][-1]
    assert record.task_mask is DEFAULT_TASK_MASK[kind] and record.decoder_mask is False
    assert record.input_style == "official" and record.fix_command_token is fix

    vocab = load_vocabulary(tmp_path / "model")
    reference = official_vocabulary(
        kind, files["vocab_file"], merges_file=files.get("merges_file"), task_mask=DEFAULT_TASK_MASK[kind],
        **({"fix_command_token": True} if kind == "chinese" else {}),
    )
    assert vocab == reference  # the same kind, options and file bytes
    assert vocab.command_tokens == reference.command_tokens and vocab.vocab_size == 128
    text = "Paris is the [MASK] of France."
    assert vocab.encode(text) == reference.encode(text)
    assert vocab.command_tokens.sop == 100 or kind == "chinese"  # N = 100 text tokens


def test_chinese_10b_numbering_is_recorded(tmp_path, tiny_files):
    tokenizer = TokenizerConfig(kind="chinese", vocab_file=str(tiny_files["chinese"]["vocab_file"]),
                                fix_command_token=False)
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG), tokenizer=tokenizer)
    assert "fix_command_token: false" in (tmp_path / "model" / TOKENIZER_FILE).read_text()
    ct = load_vocabulary(tmp_path / "model").command_tokens
    assert ct.gmask == ct.eop  # GLM-10B-Chinese as the repo pretrained it


def test_sentencepiece_vocab_file_and_old_directories(tmp_path, tiny_files):
    """``vocab_file=`` (what ``glm-jax train`` exports) records kind sentencepiece; a
    directory from before tokenizer.yaml, with only vocab.model, still loads."""
    spm_file = tiny_files["chinese"]["vocab_file"]  # any sentencepiece model will do
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG), vocab_file=spm_file)
    assert (tmp_path / "model" / VOCAB_FILE).read_bytes() == spm_file.read_bytes()
    assert read_tokenizer(tmp_path / "model") == TokenizerConfig(kind="sentencepiece", vocab_file=VOCAB_FILE)
    vocab = load_vocabulary(tmp_path / "model")
    assert isinstance(vocab, GLMVocabulary) and vocab.vocab_size == 128
    assert vocab.encode("[MASK]") == [vocab.command_tokens.mask]

    (tmp_path / "model" / TOKENIZER_FILE).unlink()
    assert load_vocabulary(tmp_path / "model") == vocab
    (tmp_path / "model" / VOCAB_FILE).unlink()
    assert read_tokenizer(tmp_path / "model") is None
    with pytest.raises(ValueError, match="records no tokenizer .* --tokenizer KIND"):
        load_vocabulary(tmp_path / "model")


def test_vocabulary_must_fit_the_model(tmp_path, tiny_files):
    # 200 BERT entries pad to 256, the fixture-sized model has 128 rows: refused before writing.
    big = write_tiny_files("bert", tmp_path / "big", num_tokens=200)
    tokenizer = TokenizerConfig(kind="bert", vocab_file=str(big["vocab_file"]))
    message = r"the bert vocabulary \(.*vocab.txt\) has vocab_size=256, but the model has vocab_size=128"
    with pytest.raises(ValueError, match=message):
        save_model_dir(tmp_path / "a", CONFIG, random_params(CONFIG), tokenizer=tokenizer)
    assert not (tmp_path / "a").exists()
    # An official vocabulary must match exactly (a smaller one means the wrong tokenizer)...
    wide = CONFIG.replace(vocab_size=256)
    small = TokenizerConfig(kind="bert", vocab_file=str(tiny_files["bert"]["vocab_file"]))
    with pytest.raises(ValueError, match="vocab_size=128, but the model has vocab_size=256 .they must be equal"):
        save_model_dir(tmp_path / "b", wide, random_params(wide), tokenizer=small)
    # ... a glm-jax sentencepiece one may be smaller than the embedding.
    save_model_dir(tmp_path / "c", wide, random_params(wide), vocab_file=tiny_files["chinese"]["vocab_file"])
    assert load_vocabulary(tmp_path / "c").vocab_size == 128
    # A directory edited into a mismatch is caught at load time, naming it.
    save_model_dir(tmp_path / "d", CONFIG, random_params(CONFIG), tokenizer=small)
    shutil.copyfile(big["vocab_file"], tmp_path / "d" / "vocab.txt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'd'}: the bert vocabulary .*vocab_size=256"):
        load_vocabulary(tmp_path / "d")


def test_tokenizer_yaml_errors(tmp_path, tiny_files):
    with pytest.raises(ValueError, match="kind 'chinese' needs fix_command_token"):
        TokenizerConfig(kind="chinese", vocab_file="cog-pretrain.model")
    with pytest.raises(ValueError, match="fix_command_token applies to kind 'chinese' only"):
        TokenizerConfig(kind="bert", vocab_file="vocab.txt", fix_command_token=True)
    with pytest.raises(ValueError, match="merges_file applies to kinds gpt2 and roberta"):
        TokenizerConfig(kind="bert", vocab_file="vocab.txt", merges_file="merges.txt")
    with pytest.raises(ValueError, match="task_mask cannot be false"):
        TokenizerConfig(kind="sentencepiece", vocab_file="vocab.model", task_mask=False)

    small = TokenizerConfig(kind="bert", vocab_file=str(tiny_files["bert"]["vocab_file"]))
    model = save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG), tokenizer=small)
    record = model / TOKENIZER_FILE
    text = record.read_text()
    record.write_text(text + "lowercase: true\n")
    with pytest.raises(ValueError, match=r"tokenizer\.yaml: unknown key 'lowercase'"):
        load_vocabulary(model)
    record.write_text(text.replace("kind: bert", "kind: wordpiece"))
    with pytest.raises(ValueError, match=r"tokenizer\.yaml: kind: expected one of 'sentencepiece'"):
        load_vocabulary(model)
    record.write_text(text)
    (model / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"bert tokenizer: vocab_file .*model/vocab.txt does not exist"):
        load_vocabulary(model)
    with pytest.raises(FileNotFoundError, match="vocab_file .*missing.txt does not exist"):
        save_model_dir(tmp_path / "x", CONFIG, random_params(CONFIG),
                       tokenizer=TokenizerConfig(kind="bert", vocab_file=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="not both"):
        save_model_dir(tmp_path / "y", CONFIG, random_params(CONFIG), vocab_file="a.model", tokenizer=small)


def test_replace_model_dir_swaps_in_a_complete_directory(tmp_path):
    first, second = random_params(CONFIG), random_params(CONFIG.replace(intermediate_size=64))
    replace_model_dir(tmp_path / "model", CONFIG, first, extra_files={"note.txt": "first"})
    replace_model_dir(tmp_path / "model", CONFIG.replace(intermediate_size=64), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old copies left
    config, params = load_model_dir(tmp_path / "model")
    assert config.intermediate_size == 64 and not (tmp_path / "model" / "note.txt").exists()
    assert_trees_equal(params, second)


def test_tokenizer_of_describes_a_vocabulary_object(tmp_path, tiny_files):
    files = tiny_files["gpt2"]
    vocab = official_vocabulary("gpt2", files["vocab_file"], merges_file=files["merges_file"], task_mask=True)
    record = tokenizer_of(vocab)
    assert (record.kind, record.task_mask, record.decoder_mask) == ("gpt2", True, False)
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG), tokenizer=record)
    assert load_vocabulary(tmp_path / "model") == vocab
    with pytest.raises(ValueError, match="cannot record a vocabulary of type object"):
        tokenizer_of(object())
