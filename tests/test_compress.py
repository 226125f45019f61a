"""Stage 3: relative indices, the .mpdz file, its size table, and the compress/decompress commands."""
import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from mpdref import models
from mpdref.cli import main
from mpdref.compress import compress, decompress, fold_biases, size_table
from mpdref.io import FormatError
from mpdref.io.mpdz import read_mpdz, write_mpdz
from mpdref.mpd import channel_mask, mpd_mask
from mpdref.prune import prune
from mpdref.quantize import quantize_weight
from mpdref.sparse_index import positions_from_indices, relative_indices


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(1, 8))
def test_relative_indices_round_trip_with_fillers(kept, bits):
    positions = np.array(sorted(kept), np.int64)
    symbols, is_filler = relative_indices(positions, bits)
    expected_symbols, expected_fillers = naive.relative_indices(positions, bits)
    np.testing.assert_array_equal(symbols, expected_symbols)
    np.testing.assert_array_equal(is_filler, expected_fillers)
    assert symbols.min(initial=0) >= 0 and symbols.max(initial=0) < 2**bits
    stored = positions_from_indices(symbols, 5001)
    np.testing.assert_array_equal(stored[~is_filler], positions)
    gaps = np.diff(np.concatenate([[-1], positions]))
    assert is_filler.sum() == np.sum((gaps - 1) // 2**bits)  # one filler per full 2^b run skipped


def test_relative_indices_follow_the_paper():
    # Han et al., Figure 2, with 3-bit indices: a gap of more than 8 inserts a filler 8 further on
    symbols, fillers = relative_indices(np.array([1, 4, 15]), 3)
    assert symbols.tolist() == [1, 2, 7, 2] and fillers.tolist() == [False, False, True, False]


def _compressible_network(rng, mpd=False):
    net = models.build("lenet-300-100", np.float32, seed=4)
    if mpd:
        for name, k in (("fc1.weight", 10), ("fc2.weight", 5)):
            shape = net.params[name].shape
            net.set_mask(name, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    else:
        prune(net, keep={"fc1.weight": 0.05, "fc2.weight": 0.1, "fc3.weight": 0.3})
    for name, bits in (("fc1.weight", 5), ("fc2.weight", 4)):
        net.params[name] = quantize_weight(net.params[name], net.masks.get(name), bits)
    return net  # fc3 keeps float32 values: stored raw


@pytest.mark.parametrize("mpd", [False, True])
def test_round_trip_restores_weights_masks_and_predictions(tmp_path, rng, mpd):
    net = _compressible_network(rng, mpd)
    compress(net, tmp_path / "m.mpdz")
    back = decompress(tmp_path / "m.mpdz")
    for k in net.params:
        np.testing.assert_array_equal(back.params[k], net.params[k])
    assert set(back.masks) == set(net.masks)
    for k in net.masks:
        np.testing.assert_array_equal(back.masks[k], net.masks[k])
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    kinds = {layer["layer"]: layer["kind"] for layer in size_table(tmp_path / "m.mpdz")["layers"]}
    assert kinds["fc1.weight"] == ("mpd" if mpd else "sparse")


def test_size_table_is_the_file(tmp_path, rng):
    net = _compressible_network(rng)
    table = compress(net, tmp_path / "m.mpdz")
    blob = (tmp_path / "m.mpdz").read_bytes()
    # read the file's layout independently of mpdref.io.mpdz
    magic, version, head_len = struct.unpack_from("<4sHI", blob)
    assert (magic, version) == (b"MPDZ", 2)
    header = json.loads(zlib.decompress(blob[10 : 10 + head_len]))
    per_layer = {}
    for name, size in header["sections"]:
        per_layer[name.split("/")[0]] = per_layer.get(name.split("/")[0], 0) + 8 * size
    assert 10 + head_len + sum(size for _, size in header["sections"]) + 32 == len(blob)
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    for row in table["layers"]:
        assert row["total_bits"] == per_layer[row["layer"]]
        assert row["dense_bits"] == 32 * (net.params[row["layer"]].size
                                          + net.params[row["layer"].replace("weight", "bias")].size)
        assert row["kept"] == pytest.approx(net.masks[row["layer"]].mean())
    assert table["file_bits"] == 8 * len(blob)
    assert table["ratio"] == pytest.approx(32 * sum(v.size for v in net.params.values()) / (8 * len(blob)))


def test_damaged_files_are_named(tmp_path, rng):
    net = _compressible_network(rng)
    compress(net, tmp_path / "m.mpdz")
    blob = bytearray((tmp_path / "m.mpdz").read_bytes())
    cases = {"flip": bytes(blob[:200]) + bytes([blob[200] ^ 1]) + bytes(blob[201:]),
             "truncated": bytes(blob[:-10]), "magic": b"XXXX" + bytes(blob[4:]), "empty": b""}
    for what, data in cases.items():
        path = tmp_path / f"{what}.mpdz"
        path.write_bytes(data)
        with pytest.raises(FormatError, match=str(path)):
            decompress(path)
    # a damaged weight stream behind a valid checksum: the error names the layer
    magic, version, head_len = struct.unpack_from("<4sHI", blob)
    header = json.loads(zlib.decompress(blob[10 : 10 + head_len]))
    pos = 10 + head_len
    for name, size in header["sections"]:
        if name == "fc1.weight/weights":
            break
        pos += size
    body = bytearray(blob[:-32])
    del body[pos + 3 : pos + 9]  # six bytes out of the stream...
    header["sections"] = [[n, s - 6 if n == "fc1.weight/weights" else s] for n, s in header["sections"]]
    head = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    body = struct.pack("<4sHI", magic, version, len(head)) + head + bytes(body[10 + head_len :])
    (tmp_path / "bad.mpdz").write_bytes(body + hashlib.sha256(body).digest())  # ...and a fresh checksum
    with pytest.raises(FormatError, match="layer fc1.weight"):
        decompress(tmp_path / "bad.mpdz")


@pytest.mark.mnist
def test_commands(tmp_path, rng, mnist_dir, capsys):
    net = _compressible_network(rng)
    models.save(net, tmp_path / "m.h5")
    assert main(["compress", str(tmp_path / "m.h5"), "-o", str(tmp_path / "m.mpdz")]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "total" in out and "ratio" in out
    assert main(["size", str(tmp_path / "m.mpdz")]) == 0
    assert capsys.readouterr().out.strip() in out
    assert main(["decompress", str(tmp_path / "m.mpdz"), "-o", str(tmp_path / "back.h5")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "m.mpdz"), "--data", str(mnist_dir)]) == 0
    from_mpdz = capsys.readouterr().out.splitlines()[-1]
    assert main(["evaluate", str(tmp_path / "m.h5"), "--data", str(mnist_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == from_mpdz
    (tmp_path / "bad.mpdz").write_bytes(b"MPDZ" + b"\0" * 40)
    assert main(["size", str(tmp_path / "bad.mpdz")]) == 1
    assert "bad.mpdz" in capsys.readouterr().err


def test_a_header_that_does_not_inflate_cleanly_is_refused(tmp_path, rng):
    """The deflated header: trailing bytes, a truncated stream and a bomb each give a FormatError."""
    from mpdref.io import mpdz

    compress(_compressible_network(rng), tmp_path / "m.mpdz")
    blob = (tmp_path / "m.mpdz").read_bytes()
    _, _, head_len = struct.unpack_from("<4sHI", blob)
    text = zlib.decompress(blob[10 : 10 + head_len])
    rest = blob[10 + head_len : -32]
    bomb = zlib.compress(text + b" " * (mpdz.MAX_HEADER_BYTES + 1), 9)
    for what, head in {"trailing": zlib.compress(text) + b"\0", "truncated": zlib.compress(text)[:-5],
                       "bomb": bomb}.items():
        body = struct.pack("<4sHI", b"MPDZ", 2, len(head)) + head + rest
        path = tmp_path / f"{what}.mpdz"
        path.write_bytes(body + hashlib.sha256(body).digest())
        with pytest.raises(FormatError, match=f"{what}.mpdz: malformed header"):
            decompress(path)


def test_code_lengths_take_four_bits(tmp_path, rng):
    """Code lengths are 4-bit fields: the section holds ceil(count / 2) bytes, and one byte short names the layer."""
    net = _compressible_network(rng)
    compress(net, tmp_path / "m.mpdz")
    header, sections, _ = read_mpdz(tmp_path / "m.mpdz")
    layer = next(layer for layer in header["layers"] if layer["name"] == "fc1.weight")
    assert layer["codebook"] > 0
    assert len(sections["fc1.weight/weight_lengths"]) == (layer["codebook"] + 1 + 1) // 2
    layers = [dict(layer) for layer in header["layers"]]
    short = [(n, d[:-1] if n == "fc1.weight/weight_lengths" else d) for n, d in sections.items()]
    header.pop("sections")
    from mpdref.io.mpdz import write_mpdz

    write_mpdz(tmp_path / "short.mpdz", dict(header, layers=layers), short)
    with pytest.raises(FormatError, match="layer fc1.weight: .* bytes of code lengths"):
        decompress(tmp_path / "short.mpdz")


def _with_dead_units(name, rng):
    """A float64 network of `name` with nonzero biases, some units of every weighted layer dead (no
    kept incoming weight) and some unread (no kept weight of the next layer reads them)."""
    net = models.build(name, np.float64, seed=5)
    names = net.weight_names()
    for name_w in names:
        net.params[name_w.replace("weight", "bias")] = rng.uniform(-1, 1, net.params[name_w].shape[0])
        mask = np.ones(net.params[name_w].shape, bool)
        mask[rng.random(len(mask)) < 0.3] = False  # dead outputs
        net.set_mask(name_w, mask)
    for before, after in zip(names, names[1:]):  # some inputs of the next layer unread
        channels = net.params[before].shape[0]
        mask = net.masks[after].reshape(len(net.masks[after]), channels, -1).copy()
        mask[:, rng.random(channels) < 0.2] = False
        net.set_mask(after, mask.reshape(net.params[after].shape))
    return net


@pytest.mark.parametrize("name", ["lenet-5", "lenet-300-100", "deep-mnist"])
def test_fold_biases_keeps_the_function(name, rng):
    net = _with_dead_units(name, rng)
    x = rng.standard_normal((3, 1, 28, 28))
    before = net.forward(x)
    biases = {k: v.copy() for k, v in net.params.items() if k.endswith(".bias")}
    zeroed = fold_biases(net)
    np.testing.assert_allclose(net.forward(x), before, rtol=1e-11, atol=1e-11)
    for k, b in biases.items():
        now = net.params[k]
        assert zeroed.get(k, 0) == int(np.sum((now == 0) & (b != 0)))
    names = net.weight_names()
    first = names[0].replace("weight", "bias")  # nothing folds into it: it only loses biases
    kept = net.params[first] != 0
    np.testing.assert_array_equal(net.params[first][kept], biases[first][kept])
    dead = {k.replace("weight", "bias"): ~net.masks[k].reshape(len(net.masks[k]), -1).any(axis=1)
            for k in names}
    for before, after in zip(names, names[1:]):  # units that no kept weight of the next layer reads
        channels = len(net.masks[before])
        unread = ~net.masks[after].reshape(len(net.masks[after]), channels, -1).any(axis=(0, 2))
        assert unread.any() and not net.params[before.replace("weight", "bias")][unread].any()
    if name == "lenet-300-100":  # ReLUs between: the dead units' biases move on
        assert dead["fc1.bias"].any() and not net.params["fc1.bias"][dead["fc1.bias"]].any()
        assert dead["fc2.bias"].any() and not net.params["fc2.bias"][dead["fc2.bias"]].any()
    if name == "lenet-5":  # no ReLU after its convolutions: both move on whole
        assert not net.params["conv1.bias"].any() and not net.params["conv2.bias"].any()
        assert not net.params["fc1.bias"][dead["fc1.bias"]].any()
    if name == "deep-mnist":  # conv2 pads its input: conv1's live units keep their biases
        alive = ~dead["conv1.bias"] & net.masks["conv2.weight"].any(axis=(0, 2, 3))
        np.testing.assert_array_equal(net.params["conv1.bias"][alive], biases["conv1.bias"][alive])
        assert not net.params["conv2.bias"][dead["conv2.bias"]].any()
    assert not any(fold_biases(net).values())  # a second fold finds nothing left to move


def test_sparse_biases_round_trip_as_version_4(tmp_path, rng):
    net = _with_dead_units("lenet-5", rng)
    net.dtype = np.dtype(np.float32)
    net.params = {k: v.astype(np.float32) for k, v in net.params.items()}
    fold_biases(net)
    table = compress(net, tmp_path / "m.mpdz")
    blob = (tmp_path / "m.mpdz").read_bytes()
    assert struct.unpack_from("<4sHI", blob)[1] == 4
    header, sections, _ = read_mpdz(tmp_path / "m.mpdz")
    kinds = {layer["name"]: layer.get("bias", "dense") for layer in header["layers"]}
    assert kinds == {"conv1.weight": "sparse", "conv2.weight": "sparse", "fc1.weight": "sparse",
                     "fc2.weight": "dense"}
    assert sections["conv1.weight/bias"] == b"" and len(sections["conv1.weight/bias_mask"]) == 3  # 20 bits
    back = decompress(tmp_path / "m.mpdz")
    for k in net.params:
        np.testing.assert_array_equal(back.params[k], net.params[k])
    for row in table["layers"]:
        bias = row["layer"].replace("weight", "bias")
        own = 8 * sum(len(v) for k, v in sections.items() if k in (f"{row['layer']}/bias", f"{row['layer']}/bias_mask"))
        assert row["bias_bits"] == own
        assert row["dense_bits"] == 32 * (net.params[row["layer"]].size + net.params[bias].size)
    # a bitmap that does not match the stored values: the error names the file and the layer
    header["layers"] = [dict(layer, bias="sparse") for layer in header["layers"]]
    sections["fc2.weight/bias_mask"] = b"\xff\x00"  # 8 nonzero, 10 values stored
    del header["sections"]
    write_mpdz(tmp_path / "bad.mpdz", header, list(sections.items()), version=4)
    with pytest.raises(FormatError, match=r"bad\.mpdz: layer fc2\.weight: a bias bitmap of 8 nonzero values, 10 stored"):
        decompress(tmp_path / "bad.mpdz")
    fc2_bias = sections["fc2.weight/bias"]
    for what, bitmap, values, kind in (("padding bits", b"\xff\xc1", fc2_bias, "sparse"),
                                       ("zero among the stored", b"\xff\xc0", bytes(4) + fc2_bias[4:], "sparse"),
                                       ("10 packed 1-bit values need 2 bytes", b"\xff", fc2_bias, "sparse"),
                                       ("unknown bias kind", b"\xff\xc0", fc2_bias, "rle")):
        sections["fc2.weight/bias_mask"], sections["fc2.weight/bias"] = bitmap, values
        header["layers"] = [dict(layer, bias=kind) if layer["name"] == "fc2.weight" else layer
                            for layer in header["layers"]]
        header.pop("sections", None)
        write_mpdz(tmp_path / "bad.mpdz", header, list(sections.items()), version=4)
        with pytest.raises(FormatError, match=rf"bad\.mpdz: layer fc2\.weight: .*{what}"):
            decompress(tmp_path / "bad.mpdz")
