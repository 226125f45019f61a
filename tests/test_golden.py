"""Bits that a refactoring must not change (tests/golden/record.py says what and how).

The values were recorded on one machine; on another (other CPU, BLAS or library
versions) floating-point results may differ in the last bit, so the tests skip there
and say how to record the values afresh.
"""
import json

import pytest

from golden import record

RECORDED = json.loads(record.VALUES.read_text())


@pytest.fixture(scope="module")
def same_machine():
    here = record.fingerprint()
    if here != RECORDED["fingerprint"]:
        pytest.skip(f"golden values were recorded on {RECORDED['fingerprint']}, this is {here}; "
                    f"record them here with `python -m tests.golden.record --write` before a refactoring")


def test_logits_and_training_steps_are_unchanged(same_machine):
    now = record.synthetic_values()
    changed = {k: (RECORDED["synthetic"][k], v) for k, v in now.items() if RECORDED["synthetic"].get(k) != v}
    assert set(now) == set(RECORDED["synthetic"])
    assert not changed, f"changed bits: {sorted(changed)}"


@pytest.mark.mnist
@pytest.mark.slow
def test_short_pipelines_write_the_same_mpdz_bytes(same_machine, mnist_dir):
    now = record.pipeline_values(mnist_dir)
    assert now == RECORDED["pipelines"]
