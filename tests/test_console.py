"""The stderr filter: native chatter out, everything of substance through, in order."""

import os

from glm_jax import console

CHATTER = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796560068.416661    2124 port.cc:153] oneDNN custom operations are on. You may see ...",
    b"W0000 00:00:1796560377.357152    2682 local_rendezvous.cc:412] Local rendezvous is aborting with status",
    b"E0000 00:00:1796560075.749029    2124 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    b"E0000 00:00:1796560081.431586    2177 util.cc:131] oneDNN supports DT_INT64 only on platforms with AVX-512.",
    b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity normalization.",
]
KEPT = [
    b"F0000 00:00:1796560075.749029    2124 cuda_driver.cc:12] Check failed: the device vanished",
    b"E0000 00:00:1796560075.749029    2124 collective.cc:52] all-reduce failed: peer 3 unreachable",
    b"glm-jax: error: something the user must read",
]


def test_is_chatter():
    assert all(console.is_chatter(line) for line in CHATTER)
    assert not any(console.is_chatter(line) for line in KEPT)


def test_filter_forwards_everything_but_chatter_in_order(capfd):
    noise = b'Traceback (most recent call last):\n  File "loop.py", line 1, in f\nRuntimeError: Event loop is closed\n'
    real = b'Traceback (most recent call last):\n  File "x.py", line 2, in g\n    g()\nValueError: a real problem\n'
    with console.NativeLogFilter():
        for line in [CHATTER[0], KEPT[0], CHATTER[1], KEPT[1]]:
            os.write(2, line + b"\n")
        os.write(2, noise + real)
        os.write(2, KEPT[2] + b"\n")
        os.write(2, CHATTER[5] + b"\nunterminated last line")
    err = capfd.readouterr().err.encode()
    assert err == KEPT[0] + b"\n" + KEPT[1] + b"\n" + real + KEPT[2] + b"\nunterminated last line"
    os.write(2, CHATTER[0] + b"\n")  # the real stderr is back after the block
    assert capfd.readouterr().err.encode() == CHATTER[0] + b"\n"
