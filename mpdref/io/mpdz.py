"""The .mpdz container: a compressed model as a JSON header and named binary sections.

    b"MPDZ"  u16 version  u32 header length  header  sections...  SHA-256 (32 bytes)

The header is UTF-8 JSON, zlib-compressed (RFC 1950; version 1 kept it plain and stored
8-bit code lengths, and is not read; version 3 is version 2 that may hold darb layers, version 4 is
version 3 that may hold sparse biases, each written only then, so that files without them stay
readable by an older reader): it names every section with its byte length, in file order, and
repeats the same few keys and layer names, which deflate cuts to about a third; in a
28 KB model that is 2% of the file. The SHA-256 covers everything before it. Reading
checks, in order: the magic, the version, the checksum, the header, and that the
sections fill the file exactly; any failure is a FormatError that names the file. What
the sections mean is `mpdref.compress`'s business.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

from mpdref.io import FormatError
from mpdref.io.atomic import write_bytes_atomic

MAGIC = b"MPDZ"
VERSION = 4  # the newest this module writes
READS = (2, 3, 4)
MAX_HEADER_BYTES = 1 << 24  # a header that inflates beyond this is refused, not inflated
_PREFIX = struct.Struct("<4sHI")
DIGEST_BYTES = 32


def write_mpdz(path, header: dict, sections: list[tuple[str, bytes]], version: int = VERSION) -> int:
    """Write the file atomically; returns its size in bytes. header gains a "sections" list."""
    if version not in READS:
        raise ValueError(f".mpdz version {version} cannot be written; versions: {READS}")
    header = dict(header, sections=[[name, len(data)] for name, data in sections])
    head = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    body = _PREFIX.pack(MAGIC, version, len(head)) + head + b"".join(data for _, data in sections)
    blob = body + hashlib.sha256(body).digest()
    write_bytes_atomic(path, blob)
    return len(blob)


def read_mpdz(path) -> tuple[dict, dict[str, bytes], dict]:
    """(header, sections by name, layout) of a verified file; layout: the byte counts of its parts."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(blob) < _PREFIX.size + DIGEST_BYTES:
        raise FormatError(f"{path}: too short to be an .mpdz file ({len(blob)} bytes)")
    magic, version, head_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise FormatError(f"{path}: not an .mpdz file (starts with {magic!r})")
    if version not in READS:
        raise FormatError(f"{path}: .mpdz version {version}; this mpdref reads versions "
                          f"{', '.join(map(str, READS))} (a newer mpdref wrote it?)")
    body_end = len(blob) - DIGEST_BYTES
    if _PREFIX.size + head_len > body_end:
        raise FormatError(f"{path}: truncated (the header claims {head_len} bytes)")
    if hashlib.sha256(blob[:body_end]).digest() != blob[body_end:]:
        raise FormatError(f"{path}: checksum mismatch: the file is corrupt or truncated")
    try:
        header = json.loads(_inflate(blob[_PREFIX.size : _PREFIX.size + head_len]))
        names = [(str(n), int(size)) for n, size in header["sections"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, zlib.error) as e:
        raise FormatError(f"{path}: malformed header ({e})") from None
    pos = _PREFIX.size + head_len
    sections = {}
    for name, size in names:
        if size < 0 or pos + size > body_end or name in sections:
            raise FormatError(f"{path}: section {name!r} does not fit the file")
        sections[name] = blob[pos : pos + size]
        pos += size
    if pos != body_end:
        raise FormatError(f"{path}: {body_end - pos} bytes after the last section")
    layout = {"prefix": _PREFIX.size, "header": head_len, "digest": DIGEST_BYTES, "total": len(blob)}
    return header, sections, layout


def _inflate(head: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(head, MAX_HEADER_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"the header inflates to more than {MAX_HEADER_BYTES:,} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("the compressed header is incomplete or followed by other bytes")
    return text
