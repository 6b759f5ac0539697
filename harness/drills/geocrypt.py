"""The geo copy's encryption at rest (seed §8: AES-256): AES-256-GCM, file
by file, in chunks, and the leak scan that shows it.

Why by hand: `cryptography` gives the AES-GCM primitive (`AESGCM`: one
message, whole, in memory), not a streaming file format, and a WAL segment
is 16 MB and a base backup as big as the database.  This is the usual
"STREAM" construction on top of it, kept small:

    header  MAGIC (8) | version (1) | chunk size (4, big-endian) | nonce prefix (8, random per file)
    chunks  AESGCM.encrypt(nonce, plaintext chunk, ad) = ciphertext | 16-byte tag, each
            chunk `chunk size` bytes of plaintext but the last (which may be shorter, or empty)
    nonce   nonce prefix | chunk index (4, big-endian)
    ad      header | relative path in the copy (UTF-8) | chunk index (8) | final flag (1)

Each chunk is authenticated before a byte of it is written out.  The index in
the nonce and the associated data catches chunks reordered; the final flag
catches a file cut at a chunk boundary (its last chunk was not sealed as
final) or extended; the relative path catches files swapped or renamed; the
header in the associated data catches a changed chunk size or version.  A
file without the header is not ours (a plaintext copy, a foreign file) and is
named as such.  Random 64-bit prefixes: rotate the key long before 2**32
files.

The key (32 bytes, base64) comes from a file or the environment and is never
written beside the copy, into a run directory or a log (harness.drills.command).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InfraError, UsageError

__all__ = ["MAGIC", "VERSION", "CHUNK", "FORMAT", "KEY_ENV", "GeoCryptError", "NotEncrypted",
           "AuthFailed", "encrypt_file", "decrypt_file", "parse_key", "read_key_file", "load_key",
           "generate_key_file", "refuse_inside", "scan_for", "inspect_copy", "KeySpec"]

MAGIC = b"MSDBGEO\x00"
VERSION = 1
CHUNK = 1 << 20                      # 1 MiB of plaintext per chunk
TAG = 16
_HEADER = struct.Struct(">8sBI8s")   # magic, version, chunk size, nonce prefix
_MIN_CHUNK, _MAX_CHUNK = 16, 64 << 20
FORMAT = f"msdb-geo v{VERSION}: AES-256-GCM, {CHUNK >> 20} MiB chunks, nonce = 8-byte random prefix + " \
         f"chunk index; path, index and final flag authenticated"
KEY_ENV = "MSDB_GEO_KEY"


class GeoCryptError(InfraError):
    """A file of the geo copy that cannot be decrypted; `relpath` names it."""

    def __init__(self, relpath: str, reason: str):
        super().__init__(f"{relpath}: {reason}")
        self.relpath, self.reason = relpath, reason


class NotEncrypted(GeoCryptError):
    """No msdb header: a plaintext or foreign file."""


class AuthFailed(GeoCryptError):
    """A chunk did not authenticate: a wrong key, or the file was altered."""


def _ad(header: bytes, relpath: str, index: int, final: bool) -> bytes:
    return header + relpath.encode() + struct.pack(">QB", index, final)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise ValueError("more than 2**32 chunks in one file")
    return prefix + struct.pack(">I", index)


def _aead(key: bytes) -> AESGCM:
    if len(key) != 32:
        raise ValueError(f"an AES-256 key is 32 bytes, not {len(key)}")
    return AESGCM(key)


def encrypt_file(key: bytes, src: Path, dst: Path, relpath: str, *, chunk: int = CHUNK) -> int:
    """Encrypt `src` into `dst` (created or replaced), `chunk` bytes at a time.
    Returns the bytes written."""
    if not _MIN_CHUNK <= chunk <= _MAX_CHUNK:
        raise ValueError(f"chunk size {chunk} is outside {_MIN_CHUNK}..{_MAX_CHUNK}")
    aead = _aead(key)
    header = _HEADER.pack(MAGIC, VERSION, chunk, os.urandom(8))
    prefix = header[-8:]
    written = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(header)
        written += len(header)
        block, index = fin.read(chunk), 0
        while True:
            nxt = fin.read(chunk) if len(block) == chunk else b""
            final = not nxt
            sealed = aead.encrypt(_nonce(prefix, index), block, _ad(header, relpath, index, final))
            fout.write(sealed)
            written += len(sealed)
            if final:
                return written
            block, index = nxt, index + 1


def decrypt_file(key: bytes, src: Path, dst: Path | None, relpath: str) -> int:
    """Decrypt `src` into `dst` (written to a temporary name and renamed only
    once every chunk authenticated), or just authenticate it (`dst` None).
    Returns the plaintext bytes.  NotEncrypted / AuthFailed name `relpath`."""
    aead = _aead(key)
    tmp = dst.with_name(dst.name + ".decrypting") if dst is not None else None
    try:
        with open(src, "rb") as fin:
            header = fin.read(_HEADER.size)
            if len(header) < _HEADER.size or not header.startswith(MAGIC):
                raise NotEncrypted(relpath, "not an encrypted msdb geo file (no msdb-geo header): "
                                            "a plaintext or foreign file")
            _, version, chunk, prefix = _HEADER.unpack(header)
            if version != VERSION:
                raise GeoCryptError(relpath, f"msdb-geo format version {version} is unknown "
                                             f"(this msdb reads version {VERSION})")
            if not _MIN_CHUNK <= chunk <= _MAX_CHUNK:
                raise AuthFailed(relpath, f"header names a chunk size of {chunk} bytes: altered")
            fout = open(tmp, "wb") if tmp is not None else None
            try:
                total, index = 0, 0
                block = fin.read(chunk + TAG)
                if not block:
                    raise AuthFailed(relpath, "no chunk after the header: the file was cut short")
                while block:
                    nxt = fin.read(chunk + TAG)
                    final = not nxt
                    try:
                        plain = aead.decrypt(_nonce(prefix, index), block, _ad(header, relpath, index, final))
                    except Exception:   # cryptography's InvalidTag, or a block shorter than a tag
                        raise AuthFailed(relpath, f"chunk {index} failed authentication (a wrong key, "
                                                  f"or the file was altered, cut short or moved)") from None
                    if fout is not None:
                        fout.write(plain)
                    total += len(plain)
                    block, index = nxt, index + 1
            finally:
                if fout is not None:
                    fout.close()
        if tmp is not None:
            os.replace(tmp, dst)
        return total
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


# -- keys -----------------------------------------------------------------------------

@dataclass(frozen=True)
class KeySpec:
    """A key and where it came from (the source is shown; the key never is)."""
    key: bytes
    source: str

    def __repr__(self) -> str:          # never the bytes, wherever a KeySpec is printed
        return f"KeySpec(source={self.source!r})"


def parse_key(text: str, source: str) -> bytes:
    """32 bytes from their base64 text (`openssl rand -base64 32`).  A bad key
    is a UsageError naming its source, never echoing what it holds."""
    t = "".join(str(text).split())
    hint = "a key is 32 random bytes in base64 (44 characters; `openssl rand -base64 32`)"
    if not t:
        raise UsageError(f"{source}: the key is empty; {hint}")
    try:
        raw = base64.b64decode(t, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{source}: the key is not base64 ({len(t)} characters, not all of them "
                         f"A-Z a-z 0-9 + / =, or badly padded); {hint}") from None
    if len(raw) != 32:
        raise UsageError(f"{source}: the key decodes to {len(raw)} bytes, not 32; {hint}")
    return raw


def read_key_file(path: str | Path, option: str) -> KeySpec:
    p = Path(path).expanduser()
    source = f"{option} {p}"
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{source}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") \
            from None
    return KeySpec(parse_key(text, source), source)


def load_key(key_file: str | None, env: Mapping[str, str]) -> KeySpec | None:
    """--geo-key-file wins over MSDB_GEO_KEY; None when neither is given."""
    if key_file is not None:
        return read_key_file(key_file, "--geo-key-file")
    if KEY_ENV in env:
        return KeySpec(parse_key(env[KEY_ENV], f"environment variable {KEY_ENV}"),
                       f"environment variable {KEY_ENV}")
    return None


def generate_key_file(path: Path) -> KeySpec:
    """A new random key into `path` (mode 0600, never over an existing file)."""
    key = AESGCM.generate_key(bit_length=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
    return KeySpec(key, f"generated {path}")


def refuse_inside(key_path: str | Path, root: Path, option: str, what: str) -> None:
    """A key kept inside the copy it protects protects nothing."""
    k, g = Path(key_path).expanduser().resolve(), Path(root).expanduser().resolve()
    if k == g or k.is_relative_to(g):
        raise UsageError(f"{option} {key_path}: lies inside {g} ({what}); keep the key away from "
                         f"the copy it protects")


# -- the leak scan ------------------------------------------------------------------

def _files(roots: list[Path]) -> list[tuple[Path, Path]]:
    out = []
    for root in roots:
        if root.is_file():
            out.append((root.parent, root))
        elif root.is_dir():
            out += [(root, p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    return out


def scan_for(roots: list[Path], needle: bytes, *, block: int = CHUNK) -> dict:
    """Every byte of every file under `roots`, searched for `needle` (across
    block boundaries too).  {"files", "bytes", "matches", "matched_files"}."""
    if not needle:
        raise ValueError("an empty needle matches everywhere")
    files = nbytes = matches = 0
    matched: list[str] = []
    keep = len(needle) - 1
    for root, p in _files(roots):
        files += 1
        n, tail = 0, b""
        with open(p, "rb") as f:
            while chunk := f.read(block):
                nbytes += len(chunk)
                buf = tail + chunk
                n += buf.count(needle)
                tail = buf[-keep:] if keep else b""
        if n:
            matches += n
            matched.append(str(p.relative_to(root)))
    return {"files": files, "bytes": nbytes, "matches": matches, "matched_files": matched[:50]}


def inspect_copy(root: Path, key: bytes) -> dict:
    """Every file of the copy: has it the header, and does it authenticate
    with `key` (as the relative path it lies at)?"""
    files = nbytes = ok = 0
    plaintext: list[str] = []
    failed: list[dict] = []
    for _, p in _files([root]):
        rel = p.relative_to(root).as_posix()
        files += 1
        nbytes += p.stat().st_size
        try:
            decrypt_file(key, p, None, rel)
            ok += 1
        except NotEncrypted:
            plaintext.append(rel)
        except GeoCryptError as e:
            failed.append({"file": rel, "reason": e.reason})
    return {"format": FORMAT, "files": files, "bytes": nbytes, "encrypted": ok,
            "plaintext_files": len(plaintext), "plaintext": plaintext[:50],
            "failed_files": len(failed), "failed": failed[:50]}
