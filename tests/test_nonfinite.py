"""The non-finite guard: flags collected without host syncs, acted on at check()."""

import jax.numpy as jnp
import pytest

from glm_jax.nonfinite import NonFiniteError, NonFiniteGuard, check_policy
from glm_jax.train import TrainConfig


def observe_all(guard, flags, start=1):
    for step, flag in enumerate(flags, start=start):
        guard.observe(step, {"nonfinite": jnp.float32(flag)})


def test_stop_names_the_first_bad_step_and_the_last_good_checkpoint():
    guard = NonFiniteGuard("stop", 10)
    observe_all(guard, [0, 0])
    assert guard.check("checkpoint step 2 in /run/checkpoints") == 0
    observe_all(guard, [0, 1, 1], start=3)
    with pytest.raises(NonFiniteError) as info:
        guard.check("checkpoint step 2 in /run/checkpoints")
    assert info.value.step == 4
    message = str(info.value)
    assert "at step 4 (train.on_nonfinite=stop)" in message
    assert "the last good state is checkpoint step 2 in /run/checkpoints" in message
    assert "\n" not in message


def test_stop_before_any_checkpoint_says_so():
    guard = NonFiniteGuard("stop", 10, section="finetune")
    observe_all(guard, [1])
    with pytest.raises(NonFiniteError, match=r"step 1 \(finetune.on_nonfinite=stop\).*no checkpoint was saved"):
        guard.check(None)


def test_skip_counts_and_stops_after_too_many_in_a_row():
    guard = NonFiniteGuard("skip_step", 3)
    observe_all(guard, [1, 1, 0, 1])  # runs of 2 and 1: fine
    assert guard.check(None) == 3
    assert guard.skipped == 3
    observe_all(guard, [1, 1], start=5)  # with step 4: three in a row
    with pytest.raises(NonFiniteError, match=r"3 steps in a row up to step 6 .*max_consecutive_skips=3"):
        guard.check("checkpoint step 4 in DIR")


def test_check_without_pending_flags_is_free():
    guard = NonFiniteGuard("stop", 1)
    assert guard.check(None) == 0


@pytest.mark.parametrize("policy, skips, message", [
    ("ignore", 10, r"train.on_nonfinite must be one of \('stop', 'skip_step'\), got 'ignore'"),
    ("skip_step", 0, r"train.max_consecutive_skips must be >= 1, got 0"),
])
def test_bad_policies_name_the_config_key(policy, skips, message):
    with pytest.raises(ValueError, match=message):
        check_policy(policy, skips, "train")
    with pytest.raises(ValueError, match=message):
        TrainConfig(on_nonfinite=policy, max_consecutive_skips=skips)
