"""Zero-shot LM rows (glm_jax/data/language_model.py) token by token against the
official rules (THUDM/GLM tasks/language_model/dataset.py, spec 4.5)."""

import json

import numpy as np
import pytest

from glm_jax.command_tokens import CommandTokens
from glm_jax.data import language_model as lm

CT = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5, smask=6, gmask=7)
NO_TASK_MASK = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)


class WordVocab:
    """Words to ids 10, 11, ... in order of first sight; a leading space is its own id 9."""

    command_tokens = CT

    def __init__(self):
        self.ids = {}

    def encode(self, text):
        out = [9] if text.startswith(" ") else []
        return out + [self.ids.setdefault(w, 10 + len(self.ids)) for w in text.split()]


def as_lists(row):
    return {k: (v.tolist() if k != "sep" else int(v)) for k, v in row.items()}


def test_lambada_bidirectional_row():
    vocab = WordVocab()
    context, answer = lm.lambada_split("the cat sat on the mat", vocab)
    assert context == [10, 11, 12, 13, 10] and answer == [9, 14]  # " mat": its own tokens, with the space
    row = as_lists(lm.lambada_row(context, answer, 12, CT))
    #                      [CLS] the cat sat on the [gM] [eos] | [sop] ' '   pad
    assert row["tokens"] == [1, 10, 11, 12, 13, 10, 7, 0, 3, 9, 0, 0]
    assert row["targets"] == [0] * 8 + [9, 14, 0, 0]
    assert row["loss_mask"] == [0] * 8 + [1, 1, 0, 0]  # no [eop]: only the word's tokens
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 7, 6, 6, 0, 0]
    assert row["block_position_ids"] == [0] * 8 + [1, 2, 0, 0]
    assert row["sep"] == 8


def test_lambada_left_truncates_the_context_and_uses_mask_without_task_masks():
    row = as_lists(lm.lambada_row([10, 11, 12, 13], [20], 6, NO_TASK_MASK))
    # 4 context + mask + answer + CLS + eos = 8 > 6: the two leftmost context tokens go.
    assert row["tokens"] == [1, 12, 13, 2, 0, 3]
    assert row["targets"] == [0, 0, 0, 0, 0, 20] and row["position_ids"][-1] == 3


def test_lambada_unidirectional_row_scores_only_the_answer():
    row = as_lists(lm.lambada_row([10, 11, 12], [9, 14], 12, CT, unidirectional=True))
    #   [CLS] the [gM] [eos] | [sop] cat sat ' ' -> targets cat sat ' ' mat
    assert row["tokens"][:8] == [1, 10, 7, 0, 3, 11, 12, 9]
    assert row["targets"][:8] == [0, 0, 0, 0, 11, 12, 9, 14]
    assert row["loss_mask"][:8] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert row["position_ids"][:8] == [0, 1, 2, 3, 2, 2, 2, 2]
    assert row["block_position_ids"][:8] == [0, 0, 0, 0, 1, 2, 3, 4]
    assert row["sep"] == 4


def test_perplexity_windows_follow_lmdataset():
    tokens = list(range(100, 110))  # 10 tokens, seq_length 6: window 5, stride 2
    rows = [as_lists(r) for r in lm.perplexity_rows(tokens, 6, 2, CT)]
    assert len(rows) == lm.num_windows(10, 6, 2) == 4
    # First window: prompt = its first token, scores tokens 1..4.
    assert rows[0]["tokens"] == [1, 100, 7, 3, 101, 102, 103]
    assert rows[0]["targets"] == [0, 0, 0, 101, 102, 103, 104]
    assert rows[0]["position_ids"] == [0, 1, 2, 2, 2, 2, 2] and rows[0]["sep"] == 3
    # Second window starts at token 2: prompt = 3 tokens (window - stride), scores 105, 106.
    assert rows[1]["tokens"] == [1, 102, 103, 104, 7, 3, 105]
    assert rows[1]["targets"] == [0, 0, 0, 0, 0, 105, 106]
    assert rows[1]["block_position_ids"] == [0, 0, 0, 0, 0, 1, 2]
    # The last window is short: padded with eos, scoring only what is left.
    assert rows[3]["tokens"] == [1, 106, 107, 108, 7, 3, 0] and rows[3]["targets"][5:] == [109, 0]
    # Every token after the first is scored exactly once.
    scored = [t for r in rows for t, m in zip(r["targets"], r["loss_mask"]) if m]
    assert scored == tokens[1:]


def test_unidirectional_windows_score_each_token_once_from_one_token_prompts():
    tokens = list(range(100, 110))
    rows = [as_lists(r) for r in lm.perplexity_rows(tokens, 6, 2, CT, unidirectional=True)]
    assert all(r["sep"] == 3 for r in rows)  # [CLS] first [gMASK]
    assert rows[1]["tokens"] == [1, 102, 7, 3, 103, 104, 105]
    assert rows[1]["loss_mask"] == [0, 0, 0, 0, 0, 1, 1]  # only the last stride tokens
    scored = [t for r in rows for t, m in zip(r["targets"], r["loss_mask"]) if m]
    assert scored == tokens[1:]


def test_perplexity_figures_follow_the_official_formula():
    out = lm.perplexities(total_nll=18.0, num_tokens=10, num_words=7)
    assert out["loss"] == pytest.approx(2.0)
    assert out["ppl"] == pytest.approx(np.exp(2.0))
    assert out["adjusted_ppl"] == pytest.approx(np.exp(2.0 * 9 / 6))
    assert lm.perplexities(1e6, 2, 2)["ppl"] == pytest.approx(np.exp(20.0))  # capped as the official script


def test_wikitext_detokeniser():
    raw = ' = = Early life = = \n He scored 1 @,@ 000 runs ( in 1 @.@ 5 years ) , " quickly " .\n'
    assert lm.wikitext_detokenize(raw) == ' == Early life ==\nHe scored 1,000 runs (in 1.5 years), "quickly" .\n'


def test_readers_name_file_and_line(tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text(json.dumps({"text": "a b c"}) + "\n\n" + json.dumps({"txt": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: no 'text' string field$"):
        lm.read_lambada(path)
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:1: not valid UTF-8"):
        lm.read_lambada(path)
    docs = tmp_path / "docs.txt"
    docs.write_text("one two\n\nthree\n")
    assert lm.read_documents(docs) == (["one two", "three"], 4)  # the blank line counts one word, as upstream


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="more than the sequence length 4"):
        lm.build_row([10, 11, 7], [12, 13], 4, CT, add_eos=False)
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        lm.build_row([10, 11], [12], 8, CT, add_eos=False)
    with pytest.raises(ValueError, match="stride must be in 1..5"):
        list(lm.perplexity_rows([1, 2, 3], 6, 6, CT))
