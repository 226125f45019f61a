"""Deep Compression, stage 3: a trained network as an .mpdz file, back again, and its size table.

Per weight, the stored entries are coded as codebook indices (the weight's distinct
values, float32, at most 2^16 of them; otherwise the raw float32 values) Huffman-coded,
and their positions in one of three ways:

* dense: no mask, every entry in row-major order, no index at all;
* mpd: a permuted block-diagonal mask (mpdref.mpd): the row and column permutations at
  ceil(log2 n) bits per index and the block boundaries; the entries in block order;
* sparse: relative indices (mpdref.sparse_index) in b bits, Huffman-coded, b chosen per
  weight (1-8) to make the weight smallest; filler entries get a codebook symbol of
  their own (one past the codebook: value 0, not a kept weight).

Biases are float32. The size table counts the bytes of the file's sections, so it is
the file; the container (mpdref.io.mpdz) adds its prefix, JSON header and checksum,
counted in the total.
"""
from __future__ import annotations

import numpy as np

from mpdref import huffman, models
from mpdref.bits import index_bits as bits_per_index
from mpdref.io import FormatError
from mpdref.io.mpdz import read_mpdz, write_mpdz
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
        _, bits, fillers, index_lengths, index_stream = best
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


def compress(net, path, max_length: int = 11, index_bits: int | None = None) -> dict:
    """Write `net` (float32 values; quantized weights share few values) as an .mpdz file; returns size_table(path)."""
    layers, sections = [], []
    for name in net.weight_names():
        layer, parts = _encode_weight(name, net.params[name].astype(np.float32), net.masks.get(name),
                                      max_length, index_bits)
        bias = name[: -len(".weight")] + ".bias"
        parts.append((f"{name}/bias", net.params[bias].astype("<f4").tobytes()))
        layers.append(layer)
        sections += parts
    write_mpdz(path, {"format": FORMAT, "network": net.name, "layers": layers}, sections)
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


def decompress(path) -> models.Network:
    """The network stored in an .mpdz file (float32), its masks included; FormatError names the file and layer."""
    header, sections, _ = read_mpdz(path)
    if header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a compressed mpdref model (format {header.get('format')!r})")
    try:
        net = models.build(str(header["network"]), np.float32)
    except (KeyError, ValueError) as e:
        raise FormatError(f"{path}: unknown network ({e})") from None
    expected = set(net.weight_names())
    names = [layer.get("name") for layer in header.get("layers", [])]
    if set(names) != expected or len(names) != len(expected):
        raise FormatError(f"{path}: its layers {names} are not those of {net.name}")
    for layer in header["layers"]:
        name = layer["name"]
        try:
            w, mask = _decode_weight(layer, sections)
            if w.shape != net.params[name].shape:
                raise ValueError(f"shape {w.shape}, the network needs {net.params[name].shape}")
            bias = np.frombuffer(sections[f"{name}/bias"], "<f4").astype(np.float32)
            bias_name = name[: -len(".weight")] + ".bias"
            if bias.shape != net.params[bias_name].shape:
                raise ValueError(f"bias of {bias.size} values, the network needs {net.params[bias_name].size}")
        except KeyError as e:
            raise FormatError(f"{path}: layer {name}: section {e} is missing") from None
        except (ValueError, TypeError, huffman.CodecError) as e:
            raise FormatError(f"{path}: layer {name}: {e}") from None
        net.params[name] = w
        net.params[bias_name] = bias
        if mask is not None:
            net.masks[name] = mask
    return net


def size_table(path) -> dict:
    """The paper's table for an .mpdz file, from its section sizes: per layer and in total."""
    header, sections, layout = read_mpdz(path)
    rows = []
    for layer in header["layers"]:
        name = layer["name"]
        own = {k.split("/", 1)[1]: len(v) * 8 for k, v in sections.items() if k.startswith(name + "/")}
        size = int(np.prod(layer["shape"]))
        stored = max(int(layer["stored"]), 1)
        n_codebook = int(layer["codebook"])
        index_bits = sum(own.get(part, 0) for part in ("indices", "index_lengths", "fillers", "row_perm", "col_perm",
                                                         "row_bounds", "col_bounds"))
        rows.append({
            "layer": name, "kind": layer["kind"], "weights": size, "kept": int(layer["kept"]) / size,
            "stored": int(layer["stored"]),
            "weight_bits_fixed": 32 if n_codebook == 0 else bits_per_index(n_codebook + (layer["kind"] == "sparse")),
            "weight_bits": own.get("weights", own.get("values", 0)) / stored,
            "index_bits_fixed": layer.get("index_bits", 0),
            "index_bits": own.get("indices", 0) / stored,
            "codebook_bits": own.get("codebook", 0) + own.get("weight_lengths", 0),
            "structure_bits": index_bits,
            "bias_bits": own.get("bias", 0),
            "total_bits": sum(own.values()),
            "dense_bits": 32 * (size + own.get("bias", 0) // 32),
        })
    total = sum(r["total_bits"] for r in rows)
    dense = sum(r["dense_bits"] for r in rows)
    overhead = 8 * (layout["prefix"] + layout["header"] + layout["digest"])
    return {"layers": rows, "layer_bits": total, "container_bits": overhead, "file_bits": total + overhead,
            "file_bytes": layout["total"], "dense_bits": dense, "ratio": dense / (total + overhead),
            "ratio_without_container": dense / total}


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
    return "\n".join(lines)
