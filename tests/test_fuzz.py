"""Damaged files: only a load of the right content or the documented error (see tests/fuzzing.py)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
import naive
from fuzzing import MUTATIONS, Outcome, allowed_contents, available_kinds, load_outcome, mutate, read, sample_files

CASES = {"idx": 1500, "model": 700, "checkpoint": 500, "mpdz": 500, "onnx": 600, "safetensors": 600, "pt": 400}
INTEROP = ("onnx", "safetensors", "pt")


def kinds(*wanted):
    """pytest params of the kinds `wanted` (all of CASES by default), each skipped where its reader is not installed."""
    return [pytest.param(kind, marks=pytest.mark.skipif(
        kind not in available_kinds(), reason=f"the {kind} reader is not installed "
        f"(pip install -e '.[interop{',crosscheck' if kind == 'pt' else ''}]')")) for kind in wanted or CASES]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return sample_files(tmp_path_factory.mktemp("samples"))


@pytest.mark.parametrize("kind", kinds())
def test_undamaged_samples_load(samples, kind, tmp_path):
    for i, sample in enumerate(samples[kind]):
        path = tmp_path / f"ok{i}{sample.suffix}"
        path.write_bytes(sample.data)
        assert load_outcome(kind, path, [sample.content]).verdict == "loaded"


@pytest.mark.parametrize("kind, some_differing", [
    ("model", {"params/fc1.weight", "masks/fc3.weight", "metadata"}),
    ("checkpoint", {"params/fc1.weight", "masks/fc3.weight", "velocity/fc1.weight", "progress/epochs_done",
                    "progress/rng"}),
    ("mpdz", {"params/fc1.weight", "masks/fc1.weight"}),
    *[pytest.param("pt", {"tensors/fc1.weight", "tensors/fc3.bias"}, marks=param.marks) for param in kinds("pt")],
])
def test_a_load_of_other_content_is_a_failure(samples, kind, some_differing, tmp_path):
    """The comparison can fail: another valid sample, passed off as the damaged first one, loads different."""
    first, second = samples[kind][:2]
    path = tmp_path / f"second{second.suffix}"
    path.write_bytes(second.data)
    outcome = load_outcome(kind, path, [first.content])
    assert outcome.verdict == "loaded-different"
    assert some_differing <= set(outcome.differing)


def test_a_splice_may_load_as_the_other_file(samples, tmp_path):
    """A splice cut at the start of both files is the other file whole: its content is allowed then."""
    first, second = samples["model"]
    path = tmp_path / f"spliced{first.suffix}"
    path.write_bytes(second.data)
    assert load_outcome("model", path, allowed_contents(first, second, ["splice"])).verdict == "loaded"


def test_a_retyped_idx_file_loads_what_its_bytes_say(samples, tmp_path):
    """One flipped bit of the (unchecksummed) header turns the uint8 sample into int8: a load of the right
    content, since the header is no longer the original's."""
    sample = samples["idx"][0]  # the raw (not gzipped) (40, 28, 28) sample
    damaged = bytearray(sample.data)
    damaged[2] ^= 0x01  # type code 0x08 (uint8) -> 0x09 (int8)
    path = tmp_path / "retyped"
    path.write_bytes(damaged)
    assert read("idx", path).dtype == np.int8
    assert load_outcome("idx", path, [sample.content]).verdict == "loaded"


def test_an_idx_load_of_other_content_is_a_failure(samples, tmp_path, monkeypatch):
    """The IDX check can fail: against an original of the same header but another dtype and shape, and
    against a decoder that reads one value differently."""
    sample = samples["idx"][0]
    path = tmp_path / "sample"
    path.write_bytes(sample.data)
    other_kind = dict(sample.content, dtype="int8", shape=(300,))
    assert load_outcome("idx", path, [other_kind]) == Outcome("loaded-different", ("dtype", "shape"))
    decode = naive.idx_decode

    def one_value_off(data, gzipped=False):
        array = decode(data, gzipped)
        array.flat[-1] ^= 1
        return array

    monkeypatch.setattr(naive, "idx_decode", one_value_off)
    assert load_outcome("idx", path, [sample.content]) == Outcome("loaded-different", ("values",))


@pytest.mark.parametrize("kind", kinds())
def test_damaged_files_load_the_right_content_or_raise_the_documented_error(samples, kind, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"fuzz-{kind}")

    @settings(max_examples=CASES[kind], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(which=st.integers(0, len(samples[kind]) - 1), seed=st.integers(0, 2**32 - 1),
           mutation=st.sampled_from(MUTATIONS), repeats=st.integers(1, 3))
    def case(which, seed, mutation, repeats):
        rng = np.random.default_rng(seed)
        sample = samples[kind][which]
        other = samples[kind][(which + 1) % len(samples[kind])]
        data = sample.data
        for _ in range(repeats):
            _, data = mutate(data, rng, other.data, kind=mutation)
        path = work / f"case{sample.suffix}"
        path.write_bytes(data)
        outcome = load_outcome(kind, path, allowed_contents(sample, other, [mutation]), seconds=10)
        assert outcome.verdict in ("loaded", "rejected"), outcome
        if kind == "idx" and outcome.verdict == "rejected":  # only where the oracle finds no IDX array either
            assert naive.idx_decode(data, gzipped=sample.suffix == ".gz") is None

    case()


@pytest.mark.parametrize("kind", kinds("onnx", "safetensors"))
def test_the_decoders_read_the_undamaged_samples_as_the_readers_do(samples, kind):
    """The oracles of the formats without a checksum agree with the readers where nothing is damaged, and a
    changed value or name is a different content."""
    for sample in samples[kind]:
        decoded = fuzzing.decoded_content(kind, sample.data)
        assert fuzzing.differences(sample.content, decoded) == []
    assert fuzzing.decoded_content(kind, samples[kind][0].data[:-1]) == {"undecodable": True}


@pytest.mark.parametrize("kind", kinds("onnx", "safetensors"))
def test_a_flipped_weight_bit_loads_what_the_bytes_say(samples, kind, tmp_path):
    """No checksum: a bit flipped in a weight's bytes loads, with that weight changed, which is the right content
    (the decoder reads the same change); the sample's own content would be a load of other content."""
    sample = samples[kind][0]
    weight = sample.content["tensors/fc2.weight"]
    start = sample.data.find(weight.tobytes())
    assert start > 0
    at = start + 4 * 17 + 3  # the high byte of fc2.weight's 18th value (little-endian float32)
    damaged = bytearray(sample.data)
    damaged[at] ^= 0x01
    path = tmp_path / f"flipped{sample.suffix}"
    path.write_bytes(damaged)
    assert load_outcome(kind, path, [sample.content]) == Outcome("loaded")
    loaded = read(kind, path)["fc2.weight"]
    assert np.count_nonzero(loaded != weight) == 1 and loaded.flat[17] != weight.flat[17]
    with pytest.MonkeyPatch.context() as patch:  # judged against the undamaged content instead: other content
        patch.setattr(fuzzing, "decoded_content", lambda kind, data: sample.content)
        assert load_outcome(kind, path, [sample.content]) == Outcome("loaded-different", ("tensors/fc2.weight",))


@pytest.mark.parametrize("kind", kinds("pt"))
def test_a_flipped_weight_bit_in_a_pytorch_file_is_rejected(samples, kind, tmp_path):
    """torch.load checks no CRC; the reader does, so a changed weight is an error and not another weight."""
    sample = samples[kind][0]
    start = sample.data.find(sample.content["tensors/fc2.weight"].tobytes())
    assert start > 0
    at = start + 4 * 17 + 3
    damaged = bytearray(sample.data)
    damaged[at] ^= 0x01
    path = tmp_path / f"flipped{sample.suffix}"
    path.write_bytes(damaged)
    assert load_outcome(kind, path, [sample.content]) == Outcome("rejected")
    import torch

    assert not torch.equal(torch.load(path, weights_only=True)["fc2.weight"],
                           torch.from_numpy(sample.content["tensors/fc2.weight"]))  # torch alone loads it
