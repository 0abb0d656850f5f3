"""The fit search of `glm-jax compile --search` (glm_jax/fit_search.py): its estimates,
its candidates, and its order, with a stand-in compiler (the real one, on a TPU
slice, is in tests/test_aot.py, which needs libtpu)."""

import importlib.util
import itertools

import pytest

from glm_jax import aot, cli, fit_search, metrics
from glm_jax import config as config_lib
from glm_jax.fit_search import Candidate
from glm_jax.model.config import REMAT_POLICIES

V5E = aot.SLICES["v5e-4"]


def embedded(*overrides):
    return config_lib.load_config("pretrain_embedded", list(overrides))


def test_the_search_orders_every_remat_policy_the_model_has():
    assert sorted(fit_search.REMAT_ORDER) == sorted(REMAT_POLICIES)


def test_recompute_fractions_follow_what_each_policy_keeps():
    model = embedded().model  # h 128, mlp 512, T 128
    h, f, t = 128, 512, 128
    per_layer = 8 * h * h + 4 * h * f + 4 * t * h
    assert fit_search.recompute_fraction(model, t, "none") == 0.0
    assert fit_search.recompute_fraction(model, t, "dots") == 0.0
    assert fit_search.recompute_fraction(model, t, "full") == 1.0
    assert fit_search.recompute_fraction(model, t, "dots_no_batch") == pytest.approx(4 * t * h / per_layer)
    assert fit_search.recompute_fraction(model, t, "minimal") == pytest.approx((4 * t * h + 2 * h * f) / per_layer)


def test_the_estimate_by_hand():
    config = embedded("model.dtype=bfloat16", "train.global_batch_size=32")
    tokens = 32 * 128
    flops = metrics.train_flops_per_token(config.model, 128) * tokens
    params = metrics.matmul_params(config.model) + 2 * 128 * 128

    # Pure FSDP over 4 chips, 2 microbatches, full remat: compute x 4/3, and per chip
    # 2 x 3/4 of the parameters moved as 2 bf16 gathers + 1 fp32 reduce-scatter.
    e = fit_search.estimate(config, Candidate(4, 1, "full", 2), V5E, chips=4)
    assert e.compute_seconds == pytest.approx(flops * 4 / 3 / (4 * 197e12 * aot.ASSUMED_MFU))
    assert e.comm_seconds == pytest.approx(2 * 0.75 * params * (2 * 2 + 4) / 400e9)
    assert e.step_seconds == max(e.compute_seconds, e.comm_seconds)

    # Tensor 2 x FSDP 2: half the parameters per FSDP group, plus four all-reduces per
    # layer of [tokens / 2, h] bf16, each moving 2 x 1/2 of it per chip.
    e = fit_search.estimate(config, Candidate(2, 2, "none", 1), V5E, chips=4)
    fsdp = 0.5 * params / 2 * (2 * 2 + 4)
    tensor = 4 * 4 * 2 * 0.5 * (tokens / 2) * 128 * 2
    assert e.comm_seconds == pytest.approx((fsdp + tensor) / 400e9)
    assert e.compute_seconds == pytest.approx(flops / (4 * 197e12 * aot.ASSUMED_MFU))

    # One chip: nothing to move.
    assert fit_search.estimate(config, Candidate(1, 1, "none", 1), V5E, chips=1).comm_seconds == 0.0


def test_candidates_respect_heads_mlp_chips_and_batch():
    config = embedded("train.global_batch_size=8")  # 2 heads
    found = fit_search.candidates(config, chips_per_slice=4)
    assert {c.tensor for c in found} == {1, 2}  # 4 and 8 do not divide 2 heads
    for c in found:
        assert c.fsdp * c.tensor == 4 and (8 // c.num_microbatches) % c.fsdp == 0
    assert {(c.tensor, c.num_microbatches) for c in found} == {(1, 1), (1, 2), (2, 1), (2, 2), (2, 4)}
    assert len(found) == 5 * len(fit_search.REMAT_ORDER)


def fake_compiler(fits_when, log):
    """A compile_fn whose verdict is ``fits_when(candidate)``, recording the order."""

    def compile_fn(config, slice_name, num_slices):
        c = Candidate(config.mesh.ici_shape[1], config.mesh.ici_shape[2], config.model.remat_policy,
                      config.train.num_microbatches)
        log.append(c)
        fits = fits_when(c)
        return aot.Report(slice_name, num_slices, 4, {"data": 1, "fsdp": c.fsdp, "tensor": c.tensor}, 0, {},
                          1 if fits else 10**12, V5E.hbm_bytes, fits, 1.0, 1.0, {}, {}, 0.5)

    return compile_fn


def test_the_search_returns_the_fastest_estimated_candidate_that_fits():
    config = embedded("train.global_batch_size=64", "model.dtype=bfloat16")
    # Memory that falls with remat and microbatches, as XLA's does.
    def fits(c):
        return fit_search.REMAT_ORDER.index(c.remat_policy) + c.num_microbatches >= 6

    log = []
    result = fit_search.search(config, "v5e-4", max_compiles=100, compile_fn=fake_compiler(fits, log))
    chosen = result.best.candidate
    every = fit_search.candidates(config, 4)
    fitting = [c for c in every if fits(c)]
    best_estimate = min(fit_search.estimate(config, c, V5E, 4).step_seconds for c in fitting)
    assert result.best.estimate.step_seconds == best_estimate and fits(chosen)
    # Compiled in estimate order, stopping at the first fit; a candidate that keeps
    # more than a failed one (less remat, no more microbatches, same mesh) never
    # comes after it.
    estimates = [fit_search.estimate(config, c, V5E, 4).step_seconds for c in log]
    assert estimates == sorted(estimates) and log[-1] == chosen and not any(fits(c) for c in log[:-1])
    order = fit_search.REMAT_ORDER.index
    for earlier, later in itertools.combinations(log, 2):
        assert not ((later.fsdp, later.tensor) == (earlier.fsdp, earlier.tensor)
                    and order(later.remat_policy) <= order(earlier.remat_policy)
                    and later.num_microbatches <= earlier.num_microbatches), (earlier, later)
    assert len(log) > 3 and [t.candidate for t in result.trials] == log
    assert "fastest estimated that fits: mesh.ici_shape=" in result.table()


def test_the_search_gives_up_after_max_compiles_and_says_so():
    log = []
    result = fit_search.search(embedded(), "v5e-4", max_compiles=3, compile_fn=fake_compiler(lambda c: False, log))
    assert result.best is None and len(log) == 3
    assert "no candidate tried fits" in result.table()
    with pytest.raises(ValueError, match="--max-compiles must be >= 1"):
        fit_search.search(embedded(), "v5e-4", max_compiles=0, compile_fn=fake_compiler(lambda c: True, []))


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_search_without_libtpu_is_one_line(capsys):
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "--search"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'glm-jax[tpu]'" in err and len(err.strip().splitlines()) == 1
