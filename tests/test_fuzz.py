"""Damaged files: only a correct load or the documented error (see mpdref.fuzzing)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpdref.fuzzing import MUTATIONS, load_outcome, mutate, sample_files

CASES = {"idx": 1500, "model": 700, "checkpoint": 500, "mpdz": 500}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return sample_files(tmp_path_factory.mktemp("samples"))


@pytest.mark.parametrize("kind", list(CASES))
def test_undamaged_samples_load(samples, kind, tmp_path):
    for i, (suffix, data) in enumerate(samples[kind]):
        path = tmp_path / f"ok{i}{suffix}"
        path.write_bytes(data)
        assert load_outcome(kind, path) == "loaded"


@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_files_load_or_raise_the_documented_error(samples, kind, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"fuzz-{kind}")

    @settings(max_examples=CASES[kind], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(which=st.integers(0, len(samples[kind]) - 1), seed=st.integers(0, 2**32 - 1),
           mutation=st.sampled_from(MUTATIONS), repeats=st.integers(1, 3))
    def case(which, seed, mutation, repeats):
        rng = np.random.default_rng(seed)
        suffix, data = samples[kind][which]
        other = samples[kind][(which + 1) % len(samples[kind])][1]
        for _ in range(repeats):
            _, data = mutate(data, rng, other, kind=mutation)
        path = work / f"case{suffix}"
        path.write_bytes(data)
        assert load_outcome(kind, path, seconds=10) in ("loaded", "rejected")

    case()
