"""ROUGE and BLEU (glm_jax/text_metrics.py): equal to the reference packages called
directly, and the official post-processing where it changes the score."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from glm_jax import text_metrics as tm

REFS = ["the cat sat on the mat near the door .", "police arrested two men in london on friday ."]
PREDS = ["a cat sat on a mat by the door .", "two men were arrested by police in london ."]


def test_rouge_without_postprocessing_equals_rouge_score():
    got = tm.rouge(REFS, PREDS, postprocess=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(p, r) for r, p in zip(REFS, PREDS)]
    for name, key in tm.ROUGE_KEYS.items():
        assert got[name] == pytest.approx(100 * sum(d[key].fmeasure for d in direct) / 2, abs=1e-9)
    assert 0 < got["rouge2"] < got["rouge1"] < 100


def test_bleu_equals_sacrebleu():
    assert tm.bleu(REFS, PREDS)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score, abs=1e-9)
    assert tm.bleu(REFS, REFS)["bleu"] == pytest.approx(100.0)
    none = tm.bleu(REFS, PREDS, tokenize="none")["bleu"]
    assert none == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS], tokenize="none").score, abs=1e-9)


@pytest.mark.parametrize("text, fixed", [
    ('he said " yes " and left', "he said `` yes '' and left"),
    ("it wasn ' t me", "it was n't me"),
    ("the dog ' s bone", "the dog 's bone"),
    ("wait . . . now", "wait ... now"),
    ("$ 3 , 000 and 3 . 5 %", "$ 3,000 and 3.5 %"),
    ("the U . N . said", "the U.N. said"),
    ("a well - known fact", "a well-known fact"),
    ("- start and end -", "- start and end -"),
    ("a -- b", "a -- b"),
])
def test_fix_tokenization(text, fixed):
    assert tm.fix_tokenization(text) == fixed


def test_fix_tokenization_per_dataset():
    assert tm.fix_tokenization("[UNK] ' s", "gigaword") == "UNK ' s"
    assert tm.fix_tokenization('" x "', "cnn_dm_org") == '" x "'


def test_postprocessing_drops_short_and_repeated_sentences_and_changes_the_score():
    reference = "police arrested two men in london on friday . [SEP] the men were charged with theft ."
    prediction = ("police arrested two men in london on friday . [SEP] ok then . [SEP] "
                  "police arrested two men in london . [SEP] the men were charged with theft .")
    assert tm.prepare_prediction(prediction).split("\n") == [
        "police arrested two men in london on friday .", "the men were charged with theft ."]
    assert tm.prepare_reference(reference).count("\n") == 1
    official = tm.rouge([reference], [prediction])
    raw = tm.rouge([reference], [prediction], postprocess=False)
    assert official["rouge1"] == pytest.approx(100.0)  # the repeats and the short sentence are gone
    assert raw["rouge1"] < 95.0


def test_drop_repeated_counts_every_earlier_sentence():
    sentences = ["a b c d e", "a b c d x", "f g h i j", "a b f g z"]
    # 4/5 of the second is in the first (> 0.7): dropped; the fourth's a, b, f, g were all seen: dropped.
    assert tm.drop_repeated(sentences, 0.7) == ["a b c d e", "f g h i j"]


def test_seqio_metric_wraps_a_metric():
    metric = tm.seqio_metric(tm.rouge, postprocess=False)
    assert metric.__name__ == "rouge" and metric(REFS, PREDS) == tm.rouge(REFS, PREDS, postprocess=False)
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        tm.rouge(REFS, PREDS[:1])
