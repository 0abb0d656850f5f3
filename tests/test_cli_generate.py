"""Official GLM weights end to end: the official test fixture converted with a tiny
tokenizer of each kind generates and scores through ``glm-jax generate``
(glm_jax/cli/generate.py) exactly as the library calls do; and the input styles
(official vs the Hugging Face port, glm_jax/decoding/prompt_layout.py) differ where
spec 1.10 says they do.

The fixture's embedding has 128 rows; a tokenizer file of 100 entries pads to 128
under the official rule (spec 2.1), so it is a fitting vocabulary for it.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from glm_jax import cli, decoding
from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import prompt_layout
from glm_jax.model import GLM
from glm_jax.model_dir import load_model_dir, load_vocabulary
from glm_jax.data.official_vocabs import official_vocabulary
from glm_jax.data.official_vocabs.tiny import write_tiny_files

PROMPTS = ["paris is the [MASK] of france .", "hello world , the quick brown fox"]
CANDIDATES = ["capital", "lazy dog"]
MAX_NEW = 8
EXTRA = {"chinese": ["--fix-command-token"]}


def convert(tmp_path, official_dir, kind: str, *flags: str):
    """``glm-jax convert`` of the fixture with a tiny ``kind`` tokenizer; returns (dir, files)."""
    files = write_tiny_files(kind, tmp_path / f"{kind}-files", num_tokens=100)
    out = tmp_path / f"{kind}{'-'.join(('', *flags))}"
    argv = ["convert", str(official_dir / "model_states.pt"), str(out), "--tokenizer", kind,
            "--vocab-file", str(files["vocab_file"]), *EXTRA.get(kind, []), *flags]
    assert cli.main(argv) == 0
    return out, files


def run_cli(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["generate", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory, official_dir):
    tmp = tmp_path_factory.mktemp("bert")
    out, files = convert(tmp, official_dir, "bert")
    return out, files


def test_converted_fixture_generates_through_the_cli(bert_model, capsys):
    out, files = bert_model
    records = run_cli(capsys, "--checkpoint", str(out), "--max-new-tokens", str(MAX_NEW), *PROMPTS)

    # The library on the same weights, with the vocabulary built from the original files.
    config, params = load_model_dir(out)
    vocab = official_vocabulary("bert", files["vocab_file"], task_mask=False)
    assert vocab.command_tokens == load_vocabulary(out).command_tokens
    expected = decoding.infill_text(params, config, vocab, PROMPTS, decoding.DecodeSettings(max_new_tokens=MAX_NEW))
    assert [r["tokens"] for r in records] == [list(e.generation.tokens) for e in expected]
    assert [r["spans"] for r in records] == [list(e.spans) for e in expected]
    assert [r["text"] for r in records] == [e.text for e in expected]
    assert all(len(r["tokens"]) > 0 for r in records)
    # The official layout: [CLS] text [eos], the BERT eos being [PAD] = 0; plain text gets [MASK] (no task masks).
    ct = vocab.command_tokens
    assert expected[0].generation.context == (ct.cls, *vocab.encode(PROMPTS[0]), ct.eos)
    assert expected[1].generation.context == (ct.cls, *vocab.encode(PROMPTS[1]), ct.mask, ct.eos)


def test_converted_fixture_scores_through_the_cli(bert_model, capsys):
    out, files = bert_model
    records = run_cli(capsys, "--checkpoint", str(out), *sum((["--score", c] for c in CANDIDATES), []), *PROMPTS)
    config, params = load_model_dir(out)
    vocab = official_vocabulary("bert", files["vocab_file"], task_mask=False)
    ct = vocab.command_tokens
    for prompt, record in zip(PROMPTS, records):
        context = prompt_layout.build_context(vocab.encode(prompt), ct)
        sums, means = decoding.score(params, config, context, [vocab.encode(c) for c in CANDIDATES], ct)
        np.testing.assert_allclose(record["sum_logprob"], sums, rtol=0, atol=1e-5)
        np.testing.assert_allclose(record["mean_logprob"], means, rtol=0, atol=1e-5)
        assert record["best"] == CANDIDATES[int(np.argmax(sums))]
        assert record["candidates"] == CANDIDATES


@pytest.mark.parametrize("kind", ["gpt2", "roberta", "chinese"])
def test_every_tokenizer_kind_generates_through_the_cli(tmp_path, official_dir, capsys, kind):
    out, files = convert(tmp_path, official_dir, kind)
    prompts = ["Paris is the [MASK] of France.", "Hello world"]
    records = run_cli(capsys, "--checkpoint", str(out), "--max-new-tokens", "4", *prompts)
    config, params = load_model_dir(out)
    # convert's defaults: task masks for gpt2 and chinese, none for roberta (as its finetuned checkpoints).
    options = {"fix_command_token": True} if kind == "chinese" else {}
    vocab = official_vocabulary(
        kind, files["vocab_file"], merges_file=files.get("merges_file"), task_mask=kind != "roberta", **options
    )
    assert vocab == load_vocabulary(out)
    assert vocab.vocab_size == config.vocab_size == 128
    expected = decoding.infill_text(params, config, vocab, prompts, decoding.DecodeSettings(max_new_tokens=4))
    assert [r["tokens"] for r in records] == [list(e.generation.tokens) for e in expected]
    assert [r["text"] for r in records] == [e.text for e in expected]
    # gpt2 and chinese have task masks: plain text gets [gMASK] and no eos after it.
    context = expected[1].generation.context
    ct = vocab.command_tokens
    assert context[-1] == (ct.gmask if kind != "roberta" else ct.eos)


# ------------------------------------------------------------------ input styles

CT = CommandTokens(pad=0, eos=0, cls=2, sep=3, mask=4, sop=100, eop=101, unk=1, gmask=102, smask=103)


def test_context_layouts_of_the_two_styles():
    text = [10, CT.mask, 11]
    official, hf_bert, hf_gpt2 = prompt_layout.OFFICIAL, prompt_layout.input_style("hf", "bert"), prompt_layout.input_style("hf", "gpt2")
    assert prompt_layout.build_context(text, CT, official) == [CT.cls, 10, CT.mask, 11, CT.eos]
    # GLMBertTokenizer inherits BERT's [CLS] x [SEP]; the other HF tokenizers end with eos.
    assert prompt_layout.build_context(text, CT, hf_bert) == [CT.cls, 10, CT.mask, 11, CT.sep]
    assert prompt_layout.build_context(text, CT, hf_gpt2) == [CT.cls, 10, CT.mask, 11, CT.eos]
    # A final [gMASK]: the official code appends no eos, the port always does.
    assert prompt_layout.build_context([10], CT, official) == [CT.cls, 10, CT.gmask]
    assert prompt_layout.build_context([10], CT, hf_gpt2) == [CT.cls, 10, CT.gmask, CT.eos]
    # Padding: official pads Part A (attended); hf would mask it, so adds none.
    assert prompt_layout.build_context(text, CT, official, pad_to=8) == [CT.cls, 10, CT.mask, 11, CT.eos, 0, 0, 0]
    assert prompt_layout.build_context(text, CT, hf_bert, pad_to=8) == [CT.cls, 10, CT.mask, 11, CT.sep]
    with pytest.raises(ValueError, match="5 tokens, more than pad_to=4"):
        prompt_layout.build_context(text, CT, hf_bert, pad_to=4)
    # Scoring: the last blank and + [eop] (official) vs the first blank, no [eop] (hf).
    context = [CT.cls, CT.mask, 10, CT.mask, CT.eos]
    assert prompt_layout.scored_blank(context, CT, official) == 3 and official.append_eop
    assert prompt_layout.scored_blank(context, CT, hf_bert) == 1 and not hf_bert.append_eop
    with pytest.raises(ValueError, match="ends contexts with sep"):
        prompt_layout.build_context(text, dataclasses.replace(CT, sep=None), hf_bert)
    with pytest.raises(ValueError, match="unknown input style 'torch'"):
        prompt_layout.input_style("torch")


def test_official_padding_is_attended_and_hf_padding_changes_nothing(bert_model):
    """Official: the pads are Part A tokens and change the output, exactly as one
    full forward pass over the padded context (pads attended) computes it."""
    out, _ = bert_model
    config, params = load_model_dir(out)
    vocab = load_vocabulary(out)
    ct = vocab.command_tokens
    ids = vocab.encode(PROMPTS[0])
    settings = decoding.DecodeSettings(max_new_tokens=MAX_NEW)  # the shapes of the CLI test: compiled once
    plain = prompt_layout.build_context(ids, ct)
    padded = prompt_layout.build_context(ids, ct, pad_to=16)
    assert padded[len(plain):] == [ct.pad] * (16 - len(plain))
    hf = prompt_layout.build_context(ids, ct, prompt_layout.input_style("hf", "bert"), pad_to=16)
    assert len(hf) == len(plain)  # masked padding: the unpadded context, same outputs
    g_plain, g_padded = decoding.generate(params, config, [plain, padded], ct, settings)

    # Reference: [padded context, sop] in one full forward, sep = 16, sop at the blank's position.
    blank = padded.index(ct.mask)
    tokens = np.array([padded + [ct.sop]])
    positions = np.array([list(range(16)) + [blank]])
    blocks = np.array([[0] * 16 + [1]])
    logits = GLM(config).apply({"params": params}, tokens, positions, blocks, sep=np.array([16]))
    logprobs = np.asarray(jax.nn.log_softmax(logits[0, -1]))
    first = g_padded.tokens[0]
    assert first == int(np.argmax(logprobs))
    np.testing.assert_allclose(g_padded.token_logprobs[0], logprobs[first], atol=1e-5)
    assert abs(g_padded.token_logprobs[0] - g_plain.token_logprobs[0]) > 1e-4  # the pads did matter


def test_hf_style_conversion_and_generation(tmp_path, official_dir, bert_model, capsys):
    """``convert --style hf``: erf GELU and hf inputs recorded; generate follows them."""
    out, files = convert(tmp_path, official_dir, "bert", "--style", "hf")
    config, params = load_model_dir(out)
    assert config.activation == "gelu_exact" and load_model_dir(bert_model[0])[0].activation == "gelu_tanh"
    assert "input_style: hf" in (out / "tokenizer.yaml").read_text()
    records = run_cli(capsys, "--checkpoint", str(out), "--max-new-tokens", str(MAX_NEW), PROMPTS[0])
    vocab = load_vocabulary(out)
    ct = vocab.command_tokens
    context = prompt_layout.build_context(vocab.encode(PROMPTS[0]), ct, prompt_layout.input_style("hf", "bert"))
    assert context[-1] == ct.sep == 3
    [expected] = decoding.generate(params, config, [context], ct, decoding.DecodeSettings(max_new_tokens=MAX_NEW))
    assert records[0]["tokens"] == list(expected.tokens)
    assert "[SEP]" not in records[0]["text"]  # the end token is not part of the filled text
    # --input-style overrides the record: official inputs on the same weights.
    official = run_cli(capsys, "--checkpoint", str(out), "--max-new-tokens", str(MAX_NEW), "--input-style",
                       "official", PROMPTS[0])
    [expected] = decoding.infill_text(params, config, vocab, PROMPTS[:1], decoding.DecodeSettings(max_new_tokens=MAX_NEW))
    assert official[0]["tokens"] == list(expected.generation.tokens)


def test_cli_errors(bert_model, tmp_path, official_dir, capsys):
    out, _ = bert_model
    assert cli.main(["generate", "--checkpoint", str(out), "--context-length", "4", PROMPTS[0]]) == 2
    assert "prompt 1: the context has 9 tokens, more than pad_to=4" in capsys.readouterr().err
    bare = tmp_path / "bare"
    assert cli.main(["convert", str(official_dir / "model_states.pt"), str(bare)]) == 0
    assert cli.main(["generate", "--checkpoint", str(bare), PROMPTS[0]]) == 2
    assert "records no tokenizer: pass --vocab" in capsys.readouterr().err
