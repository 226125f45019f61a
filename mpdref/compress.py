"""Deep Compression, stage 3: a trained network as an .mpdz file, back again, and its size table.

Per weight, the stored entries are coded as codebook indices (the weight's distinct
values, float32, at most 2^16 of them; otherwise the raw float32 values) Huffman-coded,
and their positions in one of three ways:

* dense: no mask, every entry in row-major order, no index at all;
* mpd: a permuted block-diagonal mask (mpdref.mpd): the row and column permutations at
  ceil(log2 n) bits per index and the block boundaries; the entries in block order;
* sparse: relative indices (mpdref.sparse_index) in b bits, Huffman-coded, b chosen per
  weight (1-8) to make the weight smallest; filler entries get a codebook symbol of
  their own (one past the codebook: value 0, not a kept weight);
* darb: a block-max regular mask (mpdref.darb: every block of b_r columns of row r keeps
  one weight): each row's block size, as a class in a table of the distinct sizes, and
  per kept weight its offset in its block, in ⌈log2 b_r⌉ bits or Huffman-coded, whichever
  is smaller. Chosen over sparse when the mask is regular and the index is smaller; a
  file with a darb layer is container version 3 (mpdref.io.mpdz), others stay version 2.

Biases are float32: all of a layer's, or (container version 4, written only then) a bitmap of
the nonzero ones and their values, whichever is smaller. fold_biases zeroes the biases that the
next layer can carry (through max-pooling and flattening, and for units with no kept incoming
weight, through a ReLU; not into a padded convolution, nor from the output layer) and those of
units that no kept weight reads, so that a pruned network stores few. The size table counts
the bytes of the file's sections, so it is the file; the container (mpdref.io.mpdz) adds its
prefix, JSON header and checksum, counted in the total.
"""
from __future__ import annotations

import numpy as np

from mpdref import huffman, models
from mpdref import darb
from mpdref.bits import index_bits as bits_per_index
from mpdref.io import FormatError
from mpdref.io.mpdz import read_mpdz, write_mpdz
from mpdref.models import Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU
from mpdref.mpd import MPDMask, weight_structure
from mpdref.sparse_index import positions_from_indices, relative_indices

FORMAT = "mpdref-compressed-model"
assert huffman.MAX_LENGTH <= 15, "code lengths are stored in 4 bits"
MAX_CODEBOOK = (1 << 15) - 1  # with the filler symbol, at most 2^15 symbols: codes of at most 15 bits


def _pack(values, bits: int) -> bytes:
    """Unsigned integers in `bits` bits each, most significant first, zero-padded."""
    values = np.asarray(values, np.int64)
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def _unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    raw = np.unpackbits(np.frombuffer(data, np.uint8))
    if len(raw) < bits * count or len(data) != (bits * count + 7) // 8:
        raise ValueError(f"{count} packed {bits}-bit values need {(bits * count + 7) // 8} bytes, found {len(data)}")
    return (raw[: bits * count].reshape(count, bits).astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(axis=1)


def _pack_lengths(lengths) -> bytes:
    """Huffman code lengths (0 to huffman.MAX_LENGTH = 15) in 4 bits each."""
    return _pack(lengths, 4)


def _unpack_lengths(data: bytes, count: int, what: str) -> np.ndarray:
    if len(data) != (4 * count + 7) // 8:
        raise ValueError(f"{len(data)} bytes of code lengths, where {count} for {what} take {(4 * count + 7) // 8}")
    return _unpack(data, 4, count).astype(np.uint8)


def _pack_widths(values, widths) -> bytes:
    """Unsigned integers, value i in widths[i] bits (0 bits: nothing), most significant first, zero-padded."""
    values, widths = np.asarray(values, np.int64), np.asarray(widths, np.int64)
    top = int(widths.max(initial=0))
    bit = np.arange(top - 1, -1, -1)  # (top,): the bit each column holds
    bits = (values[:, None] >> bit) & 1  # (n, top), a value's bits right-aligned
    return np.packbits(bits[bit[None, :] < widths[:, None]].astype(np.uint8)).tobytes()


def _unpack_widths(data: bytes, widths) -> np.ndarray:
    """The inverse of _pack_widths, for known widths."""
    widths = np.asarray(widths, np.int64)
    total = int(widths.sum())
    if len(data) != (total + 7) // 8:
        raise ValueError(f"{len(widths)} packed values of {total} bits need {(total + 7) // 8} bytes, found {len(data)}")
    raw = np.unpackbits(np.frombuffer(data, np.uint8))[:total].astype(np.int64)
    ends = np.cumsum(widths)
    # value i = Σ its bits · 2^(position from its end)
    owner = np.repeat(np.arange(len(widths)), widths)
    weight = ends[owner] - 1 - np.arange(total)
    return np.bincount(owner, weights=raw << weight, minlength=len(widths)).astype(np.int64)


def _darb_index(name, shape, block_sizes, positions, max_length):
    """(layer fields, sections, size in bytes) of a darb layer's index: its rows' block-size classes
    and its kept weights' offsets (fixed width or Huffman, whichever is smaller)."""
    cols = int(np.prod(shape[1:]))
    table, classes = np.unique(block_sizes, return_inverse=True)
    offsets = darb.darb_offsets(block_sizes, positions, cols)
    widths = np.repeat(darb.offset_bits(block_sizes), darb.blocks_per_row(block_sizes, cols))
    sections = [(f"{name}/block_sizes", _pack(table, bits_per_index(cols + 1))),
                (f"{name}/size_classes", _pack(classes, bits_per_index(len(table))) if len(table) > 1 else b"")]
    fixed = _pack_widths(offsets, widths)
    lengths, stream = _huffman(offsets, int(table.max()), max_length)
    if len(stream) + len(lengths) / 2 < len(fixed):
        code, offset_sections = "huffman", [(f"{name}/offset_lengths", _pack_lengths(lengths)), (f"{name}/offsets", stream)]
    else:
        code, offset_sections = "fixed", [(f"{name}/offsets", fixed)]
    sections += offset_sections
    size = sum(len(data) for _, data in sections)
    return {"kind": "darb", "block_sizes": len(table), "offset_code": code}, sections, size


def _mpd_structure(mask):
    try:
        s = weight_structure(mask)
    except ValueError:
        return None
    return s if s.k > 1 else None


def _mpd_positions(shape, s) -> np.ndarray:
    """Flat positions of the kept entries, block by block, row-major inside a block."""
    spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    parts = []
    for b in range(s.k):
        rows, cols = s.block_rows(b), s.block_cols(b)
        pairs = (rows[:, None] * shape[1] + cols[None, :]).ravel()
        parts.append((pairs[:, None] * spatial + np.arange(spatial)[None, :]).ravel())
    return np.concatenate(parts)


def _huffman(symbols, alphabet: int, max_length: int):
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(counts, max(max_length, bits_per_index(np.count_nonzero(counts))))
    return lengths, huffman.encode(symbols, lengths)


def _encode_weight(name, w, mask, max_length, index_bits):
    """(layer header, [(section, bytes)]) of one weight."""
    layer = {"name": name, "shape": list(w.shape)}
    sections = []
    if mask is None:
        layer["kind"] = "dense"
        positions = np.arange(w.size)
    elif (s := _mpd_structure(mask)) is not None:
        layer.update(kind="mpd", k=s.k, rows=len(s.row_perm), cols=len(s.col_perm))
        positions = _mpd_positions(w.shape, s)
        rows, cols = len(s.row_perm), len(s.col_perm)
        sections += [(f"{name}/row_perm", _pack(s.row_perm, bits_per_index(rows))),
                     (f"{name}/col_perm", _pack(s.col_perm, bits_per_index(cols))),
                     (f"{name}/row_bounds", _pack(s.row_bounds, bits_per_index(rows + 1))),
                     (f"{name}/col_bounds", _pack(s.col_bounds, bits_per_index(cols + 1)))]
    else:
        layer["kind"] = "sparse"
        positions = np.flatnonzero(np.asarray(mask).ravel())
    values = w.ravel()[positions].astype(np.float32)
    codebook, counts = np.unique(values, return_counts=True)
    # A codebook pays when its values (32 bits), their code lengths (4 bits) and the coded indices
    # (estimated at the Shannon code lengths, ceil(log2 1/p)) take fewer bits than raw float32.
    coded_bits = 36 * len(codebook) + 4 + float(np.sum(counts * np.maximum(1, np.ceil(np.log2(len(values) / counts)))))
    raw = len(codebook) > MAX_CODEBOOK or coded_bits >= 32 * len(values)
    layer["codebook"] = 0 if raw else len(codebook)
    fillers = np.zeros(len(positions), bool)
    if layer["kind"] == "sparse":
        best = None
        for bits in (index_bits,) if index_bits else range(1, 9):
            symbols, is_filler = relative_indices(positions, bits)
            index_lengths, index_stream = _huffman(symbols, 1 << bits, max_length)
            size = len(index_stream) + int(is_filler.sum()) * (4 if raw else 0.5) + len(index_lengths) / 2
            if best is None or size < best[0]:
                best = (size, bits, is_filler, index_lengths, index_stream)
        size, bits, fillers, index_lengths, index_stream = best
        block_sizes = darb.row_block_sizes(mask) if index_bits is None else None
        regular = None if block_sizes is None else _darb_index(name, w.shape, block_sizes, positions, max_length)
        if regular is not None and regular[2] < size:
            fields, darb_sections, _ = regular
            layer.update(fields)
            fillers = np.zeros(len(positions), bool)
            sections += darb_sections
        else:
            layer["index_bits"] = bits
            sections += [(f"{name}/index_lengths", _pack_lengths(index_lengths)), (f"{name}/indices", index_stream)]
    layer["stored"] = len(fillers)
    layer["kept"] = len(positions)
    stored_values = np.zeros(len(fillers), np.float32)
    stored_values[~fillers] = values
    if raw:
        sections.append((f"{name}/values", stored_values.astype("<f4").tobytes()))
        if layer["kind"] == "sparse":  # without a codebook, fillers are flagged one bit each
            sections.append((f"{name}/fillers", _pack(fillers.astype(np.int64), 1)))
    else:
        symbols = np.full(len(fillers), len(codebook), np.int64)  # fillers: the symbol after the codebook
        symbols[~fillers] = np.searchsorted(codebook, values)
        weight_lengths, weight_stream = _huffman(symbols, len(codebook) + 1, max_length)
        sections += [(f"{name}/codebook", codebook.astype("<f4").tobytes()),
                     (f"{name}/weight_lengths", _pack_lengths(weight_lengths)), (f"{name}/weights", weight_stream)]
    return layer, sections


# Layers between two weighted layers that a per-channel constant passes through as a per-channel
# constant (dropout is the identity at inference, where a stored model is used).
_PASS_THROUGH = (MaxPool2d, Flatten, ReLU, Dropout)


def _constant_response(layer, params, constants: np.ndarray) -> np.ndarray | None:
    """What `layer` (weights only, no bias) adds to each of its outputs when its input holds, per
    channel c, the constant constants[c] at every position; None where that is not one constant per
    output channel (a padded convolution sees zeros at the border)."""
    w = params[f"{layer.name}.weight"].astype(np.float64)
    if isinstance(layer, Conv2d):
        return None if layer.padding else w.sum(axis=(2, 3)) @ constants
    spatial, rest = divmod(layer.in_features, len(constants))  # flattened (channels, positions...)
    if rest:
        raise ValueError(f"{layer.name} reads {layer.in_features} inputs, not whole channels of {len(constants)}")
    return w @ np.repeat(constants, spatial)


def fold_biases(net) -> dict[str, int]:
    """Move into the next weighted layer's bias what it receives from this layer's biases alone, and
    zero those biases; the network (modified: its bias arrays are replaced, not written into)
    computes the same function up to float rounding. Returns {bias name: biases zeroed}.

    Between two weighted layers L and M joined only by max-pooling, flattening, ReLU and dropout,
    L's unit u with bias b_u contributes b_u at every position of its channel where no weight of
    L's is kept for u (the unit is dead), and, where no ReLU lies between, for every unit (a
    constant shift passes through max-pooling and flattening). M turns a constant per channel into a
    constant per output, W_M applied to it (summed over a convolution's kernel, unless M pads its
    input), which M's bias adds instead: b_M += W_M · c, b_u = 0. A unit that no kept weight of M
    reads gets bias 0 as well (its output goes nowhere). Caffe's LeNet-5 has no ReLU after its
    convolutions: every convolution bias moves on to fc1."""
    zeroed = {}
    weighted = [i for i, layer in enumerate(net.layers) if isinstance(layer, (Dense, Conv2d))]
    for i, j in zip(weighted, weighted[1:]):
        between = net.layers[i + 1:j]
        if not all(isinstance(layer, _PASS_THROUGH) for layer in between):
            continue
        source, target = net.layers[i], net.layers[j]
        bias = net.params[f"{source.name}.bias"]
        w = net.params[f"{source.name}.weight"]
        dead = ~np.any(w.reshape(len(w), -1) != 0, axis=1)
        relu = any(isinstance(layer, ReLU) for layer in between)
        moved = dead if relu else np.ones(len(bias), bool)
        constants = np.where(moved, np.maximum(bias, 0) if relu else bias, 0).astype(np.float64)
        shift = _constant_response(target, net.params, constants)
        if shift is None:
            moved = np.zeros(len(bias), bool)
        else:
            target_bias = f"{target.name}.bias"
            net.params[target_bias] = (net.params[target_bias] + shift).astype(net.dtype)
        w_target = net.params[f"{target.name}.weight"]
        read = np.any(w_target.reshape(len(w_target), len(bias), -1) != 0, axis=(0, 2))
        zero = (moved | ~read) & (bias != 0)
        net.params[f"{source.name}.bias"] = np.where(zero, 0, bias).astype(net.dtype)
        zeroed[f"{source.name}.bias"] = int(zero.sum())
    return zeroed


def describe_folded(zeroed: dict[str, int]) -> str:
    """fold_biases's result as one line ("" when it zeroed nothing)."""
    counts = [f"{name} {count}" for name, count in zeroed.items() if count]
    return "biases zeroed, their effect moved to the next layer's: " + ", ".join(counts) if counts else ""


def _encode_bias(name, bias) -> tuple[dict, list]:
    """(layer fields, sections) of a layer's biases: every value as float32, or a bitmap of the nonzero
    ones (one bit per bias) and their float32 values, whichever is smaller."""
    bias = np.asarray(bias, np.float32)
    nonzero = bias != 0
    if (len(bias) + 7) // 8 + 4 * int(nonzero.sum()) < 4 * len(bias):
        return {"bias": "sparse"}, [(f"{name}/bias_mask", _pack(nonzero.astype(np.int64), 1)),
                                    (f"{name}/bias", bias[nonzero].astype("<f4").tobytes())]
    return {}, [(f"{name}/bias", bias.astype("<f4").tobytes())]


def _decode_bias(layer, sections, count: int) -> np.ndarray:
    """The inverse of _encode_bias for a layer of `count` outputs."""
    values = np.frombuffer(sections[f"{layer['name']}/bias"], "<f4").astype(np.float32)
    kind = layer.get("bias", "dense")
    if kind == "dense":
        if len(values) != count:
            raise ValueError(f"bias of {len(values)} values, the network needs {count}")
        return values
    if kind != "sparse":
        raise ValueError(f"unknown bias kind {kind!r}")
    bitmap = sections[f"{layer['name']}/bias_mask"]
    nonzero = _unpack(bitmap, 1, count).astype(bool)
    if np.unpackbits(np.frombuffer(bitmap, np.uint8))[count:].any():
        raise ValueError("the bias bitmap's padding bits are not zero")
    if int(nonzero.sum()) != len(values):
        raise ValueError(f"a bias bitmap of {int(nonzero.sum())} nonzero values, {len(values)} stored")
    if np.any(values == 0):
        raise ValueError("a zero among the stored nonzero biases")
    bias = np.zeros(count, np.float32)
    bias[nonzero] = values
    return bias


def compress(net, path, max_length: int = 11, index_bits: int | None = None) -> dict:
    """Write `net` (float32 values; quantized weights share few values) as an .mpdz file; returns size_table(path)."""
    layers, sections = [], []
    for name in net.weight_names():
        layer, parts = _encode_weight(name, net.params[name].astype(np.float32), net.masks.get(name),
                                      max_length, index_bits)
        bias_fields, bias_sections = _encode_bias(name, net.params[name[: -len(".weight")] + ".bias"])
        layer.update(bias_fields)
        layers.append(layer)
        sections += parts + bias_sections
    # the oldest version that holds the file, so that older mpdref reads what it can
    version = (4 if any(layer.get("bias") == "sparse" for layer in layers)
               else 3 if any(layer["kind"] == "darb" for layer in layers) else 2)
    write_mpdz(path, {"format": FORMAT, "network": net.name, "layers": layers}, sections, version)
    return size_table(path)


def _decode_weight(layer, sections):
    name, shape = layer["name"], tuple(layer["shape"])
    size = int(np.prod(shape))
    stored, kept = int(layer["stored"]), int(layer["kept"])
    if layer["kind"] == "dense":
        positions = np.arange(size)
    elif layer["kind"] == "mpd":
        rows, cols, k = int(layer["rows"]), int(layer["cols"]), int(layer["k"])
        row_perm = _unpack(sections[f"{name}/row_perm"], bits_per_index(rows), rows)
        col_perm = _unpack(sections[f"{name}/col_perm"], bits_per_index(cols), cols)
        row_bounds = _unpack(sections[f"{name}/row_bounds"], bits_per_index(rows + 1), k + 1)
        col_bounds = _unpack(sections[f"{name}/col_bounds"], bits_per_index(cols + 1), k + 1)
        if (sorted(row_perm) != list(range(rows)) or sorted(col_perm) != list(range(cols))
                or np.any(np.diff(row_bounds) <= 0) or np.any(np.diff(col_bounds) <= 0)
                or row_bounds[-1] != rows or col_bounds[-1] != cols or row_bounds[0] or col_bounds[0]):
            raise ValueError("the permutations or block boundaries are inconsistent")
        positions = _mpd_positions(shape, MPDMask(None, row_perm, col_perm, row_bounds, col_bounds))
    elif layer["kind"] == "sparse":
        bits = int(layer["index_bits"])
        index_lengths = _unpack_lengths(sections[f"{name}/index_lengths"], 1 << bits, f"{bits}-bit indices")
        positions = positions_from_indices(huffman.decode(sections[f"{name}/indices"], index_lengths, stored), size)
    elif layer["kind"] == "darb":
        positions = _darb_positions(layer, sections, shape, stored)
    else:
        raise ValueError(f"unknown layer kind {layer['kind']!r}")
    if len(positions) != stored:
        raise ValueError(f"{len(positions)} positions for {stored} stored entries")
    n_codebook = int(layer["codebook"])
    if n_codebook == 0:
        values = np.frombuffer(sections[f"{name}/values"], "<f4").astype(np.float32)
        if len(values) != stored:
            raise ValueError(f"{len(values)} raw values for {stored} stored entries")
        fillers = np.zeros(stored, bool)
        if layer["kind"] == "sparse":
            fillers = _unpack(sections[f"{name}/fillers"], 1, stored).astype(bool)
    else:
        codebook = np.frombuffer(sections[f"{name}/codebook"], "<f4").astype(np.float32)
        if len(codebook) != n_codebook:
            raise ValueError(f"a codebook of {len(codebook)} values where {n_codebook} were announced")
        lengths = _unpack_lengths(sections[f"{name}/weight_lengths"], n_codebook + 1, f"a codebook of {n_codebook}")
        symbols = huffman.decode(sections[f"{name}/weights"], lengths, stored)
        fillers = symbols == n_codebook
        values = np.zeros(stored, np.float32)
        values[~fillers] = codebook[symbols[~fillers]]
    if int((~fillers).sum()) != kept:
        raise ValueError(f"{int((~fillers).sum())} kept weights where {kept} were announced")
    w = np.zeros(size, np.float32)
    w[positions[~fillers]] = values[~fillers]
    mask = None
    if layer["kind"] != "dense":
        mask = np.zeros(size, bool)
        mask[positions[~fillers]] = True
        mask = mask.reshape(shape)
    return w.reshape(shape), mask


def _darb_block_sizes(layer, sections, shape) -> np.ndarray:
    """Every row's block size, from a darb layer's table of sizes and the rows' classes in it."""
    name = layer["name"]
    rows, cols = shape[0], int(np.prod(shape[1:]))
    n_table = int(layer["block_sizes"])
    if not 1 <= n_table <= cols:
        raise ValueError(f"{n_table} block sizes for rows of {cols}")
    table = _unpack(sections[f"{name}/block_sizes"], bits_per_index(cols + 1), n_table)
    if np.any(table < 1) or np.any(table > cols) or np.any(np.diff(table) <= 0):
        raise ValueError(f"block sizes {table.tolist()} are not distinct sizes in [1, {cols}]")
    if n_table == 1:
        if sections[f"{name}/size_classes"]:
            raise ValueError("size classes stored for a single block size")
        return np.full(rows, table[0], np.int64)
    classes = _unpack(sections[f"{name}/size_classes"], bits_per_index(n_table), rows)
    if np.any(classes >= n_table):
        raise ValueError("the rows' size classes do not fit the table of block sizes")
    return table[classes]


def _darb_positions(layer, sections, shape, stored) -> np.ndarray:
    """The flat positions of a darb layer's kept weights, row by row, block by block."""
    name = layer["name"]
    cols = int(np.prod(shape[1:]))
    block_sizes = _darb_block_sizes(layer, sections, shape)
    counts = darb.blocks_per_row(block_sizes, cols)
    if int(counts.sum()) != stored:
        raise ValueError(f"the block sizes give {int(counts.sum())} kept weights, where {stored} are stored")
    sizes_of = np.repeat(block_sizes, counts)  # each kept weight's block size
    if layer["offset_code"] == "huffman":
        lengths = _unpack_lengths(sections[f"{name}/offset_lengths"], int(block_sizes.max()), "block offsets")
        offsets = huffman.decode(sections[f"{name}/offsets"], lengths, stored)
    elif layer["offset_code"] == "fixed":
        offsets = _unpack_widths(sections[f"{name}/offsets"], darb.offset_bits(sizes_of))
    else:
        raise ValueError(f"unknown offset code {layer['offset_code']!r}")
    positions = darb.darb_positions(block_sizes, offsets, cols)
    row_end = ((positions - offsets) // cols + 1) * cols  # the flat position after its block's row
    if np.any(offsets >= sizes_of) or np.any(positions >= row_end):
        raise ValueError("an offset runs past the end of its block")
    return positions


def _read_checked(path) -> tuple[dict, dict, dict, dict]:
    """(header, sections, layout, the network's parameter shapes) of an .mpdz file whose header names a
    known network and exactly its weights, each with the weight's shape: checked before any section is
    decoded, so that no size read from a header reaches an allocation. FormatError otherwise."""
    header, sections, layout = read_mpdz(path)
    if header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a compressed mpdref model (format {header.get('format')!r})")
    try:
        shapes = models.parameter_shapes(str(header["network"]))
    except (KeyError, ValueError) as e:
        raise FormatError(f"{path}: unknown network ({e})") from None
    expected = [n for n in shapes if n.endswith(".weight")]
    layers = header.get("layers")
    names = [layer.get("name") if isinstance(layer, dict) else None for layer in layers or []]
    if not isinstance(layers, list) or sorted(map(str, names)) != sorted(expected) or len(names) != len(expected):
        raise FormatError(f"{path}: its layers {names} are not those of {header['network']}")
    for layer in layers:
        if layer.get("shape") != list(shapes[layer["name"]]):
            raise FormatError(f"{path}: layer {layer['name']}: shape {layer.get('shape')}, the network needs "
                              f"{list(shapes[layer['name']])}")
    return header, sections, layout, shapes


# A well-formed file (its checksum right) whose header or sections do not add up: what decoding a
# layer may raise, each turned into a FormatError naming the file and the layer.
_DECODING_ERRORS = (KeyError, ValueError, TypeError, OverflowError, huffman.CodecError)


def decompress(path) -> models.Network:
    """The network stored in an .mpdz file (float32), its masks included; FormatError names the file and layer."""
    header, sections, _, _ = _read_checked(path)
    net = models.build(str(header["network"]), np.float32)
    for layer in header["layers"]:
        name = layer["name"]
        try:
            w, mask = _decode_weight(layer, sections)  # of the network's shape (_read_checked)
            bias_name = name[: -len(".weight")] + ".bias"
            bias = _decode_bias(layer, sections, net.params[bias_name].size)
        except KeyError as e:
            raise FormatError(f"{path}: layer {name}: section {e} is missing") from None
        except _DECODING_ERRORS as e:
            raise FormatError(f"{path}: layer {name}: {e}") from None
        net.params[name] = w
        net.params[bias_name] = bias
        if mask is not None:
            net.masks[name] = mask
    return net


def _mean_offset_bits(layer, sections) -> float:
    """A darb layer's fixed-width offset bits per kept weight (before Huffman)."""
    shape = tuple(layer["shape"])
    return round(darb.mean_offset_bits(_darb_block_sizes(layer, sections, shape), int(np.prod(shape[1:]))), 2)


def _size_row(layer, sections) -> dict:
    """One layer's row of the size table, from the sizes of its sections."""
    name = layer["name"]
    own = {k.split("/", 1)[1]: len(v) * 8 for k, v in sections.items() if k.startswith(name + "/")}
    size = int(np.prod(layer["shape"]))
    stored = max(int(layer["stored"]), 1)
    n_codebook = int(layer["codebook"])
    index_bits = sum(own.get(part, 0) for part in ("indices", "index_lengths", "fillers", "row_perm", "col_perm",
                                                     "row_bounds", "col_bounds", "block_sizes", "size_classes",
                                                     "offsets", "offset_lengths"))
    return {
        "layer": name, "kind": layer["kind"], "weights": size, "kept": int(layer["kept"]) / size,
        "stored": int(layer["stored"]),
        "weight_bits_fixed": 32 if n_codebook == 0 else bits_per_index(n_codebook + (layer["kind"] == "sparse")),
        "weight_bits": own.get("weights", own.get("values", 0)) / stored,
        "index_bits_fixed": layer.get("index_bits", 0) if layer["kind"] != "darb" else _mean_offset_bits(layer, sections),
        "index_bits": (own.get("indices", 0) + own.get("offsets", 0)) / stored,
        "codebook_bits": own.get("codebook", 0) + own.get("weight_lengths", 0),
        "structure_bits": index_bits,
        "bias_bits": own.get("bias", 0) + own.get("bias_mask", 0),
        "total_bits": sum(own.values()),
        "dense_bits": 32 * (size + int(layer["shape"][0])),  # the weights and one bias per output
        # the ADMM papers' count: each kept weight's codebook index at a fixed width, nothing else
        "weight_data_bits": int(layer["kept"]) * (32 if n_codebook == 0 else bits_per_index(n_codebook)),
    }


def size_table(path) -> dict:
    """The paper's table for an .mpdz file, from its section sizes: per layer and in total."""
    header, sections, layout, _ = _read_checked(path)
    rows = []
    for layer in header["layers"]:
        try:
            rows.append(_size_row(layer, sections))
        except _DECODING_ERRORS as e:
            raise FormatError(f"{path}: layer {layer['name']}: {e}") from None
    total = sum(r["total_bits"] for r in rows)
    dense = sum(r["dense_bits"] for r in rows)
    overhead = 8 * (layout["prefix"] + layout["header"] + layout["digest"])
    weight_data = sum(r["weight_data_bits"] for r in rows)
    return {"layers": rows, "layer_bits": total, "container_bits": overhead, "file_bits": total + overhead,
            "file_bytes": layout["total"], "dense_bits": dense, "ratio": dense / (total + overhead),
            "ratio_without_container": dense / total,
            "weight_data_bits": weight_data,
            "weight_data_ratio": 32 * sum(r["weights"] for r in rows) / max(weight_data, 1)}


def format_size_table(table: dict) -> str:
    head = (f"{'layer':<14} {'kind':<7} {'weights':>9} {'kept':>7} {'w bits':>6} {'→ Huff':>7} "
            f"{'i bits':>6} {'→ Huff':>7} {'codebook':>9} {'index/perm':>10} {'bias':>7} {'total':>10} {'ratio':>7}")
    lines = [head, "-" * len(head)]
    for r in table["layers"]:
        lines.append(f"{r['layer']:<14} {r['kind']:<7} {r['weights']:>9,} {r['kept']:>7.2%} {r['weight_bits_fixed']:>6} "
                     f"{r['weight_bits']:>7.2f} {r['index_bits_fixed'] or '-':>6} {r['index_bits']:>7.2f} "
                     f"{r['codebook_bits']:>9,} {r['structure_bits']:>10,} {r['bias_bits']:>7,} "
                     f"{r['total_bits']:>10,} {r['dense_bits'] / r['total_bits']:>6.1f}x")
    lines.append(f"{'container':<14} {'':<7} {'':>9} {'':>7} {'':>6} {'':>7} {'':>6} {'':>7} {'':>9} {'':>10} {'':>7} "
                 f"{table['container_bits']:>10,}")
    weights = sum(r["weights"] for r in table["layers"])
    kept = sum(r["kept"] * r["weights"] for r in table["layers"]) / weights
    lines.append(f"{'total':<14} {'':<7} {weights:>9,} {kept:>7.2%} {'':>6} {'':>7} {'':>6} {'':>7} {'':>9} {'':>10} "
                 f"{'':>7} {table['file_bits']:>10,} {table['ratio']:>6.1f}x")
    lines.append(f"file: {table['file_bytes']:,} bytes; dense float32: {table['dense_bits'] // 8:,} bytes; "
                 f"ratio {table['ratio']:.1f}x ({table['ratio_without_container']:.1f}x without the container's "
                 f"{table['container_bits'] // 8:,}-byte header and checksum)")
    lines.append(f"weight data only (the ADMM papers' count: kept weights x fixed-width codebook index bits, no "
                 f"index, codebook or biases): {table['weight_data_bits']:,} bits against "
                 f"{32 * weights:,} dense weight bits, {table['weight_data_ratio']:.1f}x")
    return "\n".join(lines)
