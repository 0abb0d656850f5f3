"""``glm-jax forward`` (glm_jax/cli/forward.py) and the spec's worked example it runs
(glm_jax/model/worked_example.py)."""

from glm_jax import cli
from glm_jax.model.worked_example import worked_example


def test_worked_example_is_the_spec_layout():
    """[CLS] x1 x2 [MASK] x4 [MASK] | [sop] x5 x6 | [sop] x3 (spec 2.2)."""
    batch = worked_example(cls_id=1, mask_id=2, sop_id=3, text_ids=[11, 12, 13, 14, 15, 16])
    assert batch["tokens"].tolist() == [[1, 11, 12, 2, 14, 2, 3, 15, 16, 3, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 5, 5, 5, 3, 3]]
    assert batch["block_position_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2]]
    assert batch["sep"].tolist() == [6]


def test_forward_prints_the_layout_and_the_predictions(capsys):
    assert cli.main(["forward"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model: ") and lines[0].endswith("parameters (random init)")
    assert lines[1].split() == ["position", "token", "pos", "block", "part", "argmax"]
    rows = [line.split() for line in lines[2:-1]]
    assert [r[0] for r in rows] == [str(t) for t in range(11)]
    assert [r[4] for r in rows] == ["A"] * 6 + ["B"] * 5
    assert lines[-1].startswith("logits (1, 11, 128) float32; first call (compile + run)")
