#!/usr/bin/env python3
"""Independent reader for kagi envelope files.

Written only from docs/envelope.md, docs/wrapped-blob.md and docs/api.md (no kagi source was
read), as a check that those documents are exact.

    envelope_reader.py --addr http://127.0.0.1:PORT --token TOKEN [--require-context K=V]... INPUT OUTPUT

Exit 0 on success; otherwise one line "envelope_reader: <reason>" on stderr, exit 1, no OUTPUT.
"""
import argparse, base64, hashlib, json, os, struct, sys, tempfile, urllib.error, urllib.request
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC, VERSION, ALG_AES256GCM_STREAM = b"kagienc1", 1, 1
MAX_SEGMENT, TAG, SALT, PREFIX = 16777216, 16, 32, 7
BLOB_MIN, BLOB_MAX = 49, 4145                      # wrapped-blob.md: 0..4096-byte plaintext
CTX_MIN_LEN, CTX_MAX_LEN = 2, 262144               # envelope.md: range of C
CTX_MAX_PAIRS, CTX_KEY_MAX, CTX_VAL_MAX = 64, 256, 1024
SEGMENT_KEY_INFO = b"kagienc1 segment key"         # 20 ASCII bytes


class Fail(Exception):
    pass


def read_full(f, n):
    """Read up to n bytes, looping over short reads; fewer only at end of file."""
    buf = bytearray()
    while len(buf) < n:
        part = f.read(n - len(buf))
        if not part:
            break
        buf += part
    return bytes(buf)


def need(f, n, what):
    data = read_full(f, n)
    if len(data) != n:
        raise Fail(f"truncated header ({what})")
    return data


def decode_context(raw):
    """Decode the canonical context (wrapped-blob.md), refusing any non-canonical encoding."""
    def take(pos, n):
        if pos + n > len(raw):
            raise Fail("malformed context: runs past its length")
        return raw[pos:pos + n], pos + n
    cnt, pos = take(0, 2)
    count = struct.unpack(">H", cnt)[0]
    if count > CTX_MAX_PAIRS:
        raise Fail(f"malformed context: {count} pairs (max {CTX_MAX_PAIRS})")
    ctx, prev = {}, None
    for _ in range(count):
        kl, pos = take(pos, 2)
        k, pos = take(pos, struct.unpack(">H", kl)[0])
        vl, pos = take(pos, 2)
        v, pos = take(pos, struct.unpack(">H", vl)[0])
        if not 1 <= len(k) <= CTX_KEY_MAX or len(v) > CTX_VAL_MAX:
            raise Fail("malformed context: key or value length out of range")
        if prev is not None and k <= prev:
            raise Fail("malformed context: keys not in strictly ascending byte order")
        prev = k
        try:
            ctx[k.decode("utf-8")] = v.decode("utf-8")
        except UnicodeDecodeError:
            raise Fail("malformed context: not UTF-8") from None
    if pos != len(raw):
        raise Fail("malformed context: trailing bytes")
    return ctx


def read_header(f):
    fixed = need(f, 16, "fixed fields")
    magic, version, alg, seg, wlen = struct.unpack(">8sBBIH", fixed)
    if magic != MAGIC:
        raise Fail("not a kagi envelope (bad magic)")
    if version != VERSION:
        raise Fail(f"unsupported version {version}")
    if alg != ALG_AES256GCM_STREAM:
        raise Fail(f"unsupported algorithm {alg}")
    if not 1 <= seg <= MAX_SEGMENT:
        raise Fail(f"segment size {seg} out of range")
    if not BLOB_MIN <= wlen <= BLOB_MAX:
        raise Fail(f"wrapped DEK length {wlen} out of range")
    blob = need(f, wlen, "wrapped DEK")
    if blob[0] != 0x01:
        raise Fail(f"wrapped DEK has unknown blob format {blob[0]}")
    clen_raw = need(f, 4, "context length")
    clen = struct.unpack(">I", clen_raw)[0]
    if not CTX_MIN_LEN <= clen <= CTX_MAX_LEN:
        raise Fail(f"context length {clen} out of range")
    ctx_raw = need(f, clen, "context")
    ctx = decode_context(ctx_raw)
    salt = need(f, SALT, "salt")
    prefix = need(f, PREFIX, "nonce prefix")
    header = fixed + blob + clen_raw + ctx_raw + salt + prefix
    return seg, blob, ctx, salt, prefix, hashlib.sha256(header).digest()


def fetch_dek(addr, token, blob, ctx):
    body = json.dumps({"ciphertext": base64.b64encode(blob).decode(), "context": ctx}).encode()
    req = urllib.request.Request(addr.rstrip("/") + "/v1/datakey/decrypt", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            if resp.status != 200:
                raise Fail(f"key service answered {resp.status}, expected 200")
            answer = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            err = json.load(e)
            detail = f"{err.get('code')}: {err.get('error')}"
        except Exception:
            detail = e.reason
        raise Fail(f"key service refused ({e.code} {detail})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Fail(f"key service unreachable or bad answer: {e}") from None
    try:                                                 # standard base64 with padding
        dek = bytearray(base64.b64decode(answer["plaintext"], validate=True))
    except Exception:
        raise Fail("key service answer has no valid base64 plaintext") from None
    if len(dek) != 32:
        raise Fail(f"data key is {len(dek)} bytes, AES-256 needs 32")
    return dek


def segment_key(dek, salt):
    """K = HKDF-SHA-256(IKM = DEK, salt = salt, info = "kagienc1 segment key", L = 32)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=SEGMENT_KEY_INFO).derive(dek)


def decrypt_body(f, out, key, seg, prefix, aad):
    aead, size = AESGCM(key), seg + TAG

    def open_chunk(i, chunk, last):
        return aead.decrypt(prefix + struct.pack(">IB", i, last), chunk, aad)

    cur, i = read_full(f, size), 0
    while True:
        if i > 0xFFFFFFFF:
            raise Fail("too many segments")
        nxt = read_full(f, size) if len(cur) == size else b""  # one chunk ahead
        final = not nxt
        if len(cur) < TAG:                               # final chunk must be 16..S+16 bytes
            raise Fail(f"truncated (segment {i} is {len(cur)} bytes, shorter than its tag)")
        try:
            out.write(open_chunk(i, cur, 1 if final else 0))
        except InvalidTag:
            try:                                         # diagnose only; nothing is written
                open_chunk(i, cur, 0 if final else 1)
                why = "truncated" if final else "extra bytes after its final segment"
            except InvalidTag:
                why = f"segment {i} does not authenticate"
            raise Fail(why) from None
        if final:
            return
        cur, i = nxt, i + 1


def main(argv):
    ap = argparse.ArgumentParser(prog="envelope_reader")
    ap.error = lambda msg: (_ for _ in ()).throw(Fail(msg))
    ap.add_argument("--addr", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--require-context", action="append", default=[], metavar="K=V")
    ap.add_argument("input")
    ap.add_argument("output")
    args = ap.parse_args(argv)
    required = []
    for kv in args.require_context:
        if "=" not in kv:
            raise Fail(f"--require-context wants K=V, got {kv!r}")
        required.append(kv.split("=", 1))
    with open(args.input, "rb") as f:
        seg, blob, ctx, salt, prefix, aad = read_header(f)
        for k, v in required:
            if ctx.get(k) != v:
                raise Fail(f"context lacks required {k}={v}")
        dek = fetch_dek(args.addr, args.token, blob, ctx)
        try:
            key = segment_key(dek, salt)                 # bytes: cannot be wiped in Python
        finally:
            dek[:] = bytes(len(dek))                     # best effort: Python may hold copies
        fd, tmp = tempfile.mkstemp(prefix=".envelope_reader.", dir=os.path.dirname(os.path.abspath(args.output)))
        try:
            with os.fdopen(fd, "wb") as out:
                decrypt_body(f, out, key, seg, prefix, aad)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, args.output)
        except BaseException:
            os.unlink(tmp)
            raise


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Fail as e:
        sys.exit("envelope_reader: " + " ".join(str(e).split()))
    except Exception as e:
        sys.exit("envelope_reader: " + " ".join(f"{type(e).__name__}: {e}".split()))
