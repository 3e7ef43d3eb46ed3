#!/usr/bin/env python3
"""An independent consumer and producer of sensorgate sealed messages, version 2.

Written from docs/FORMAT.md alone, on a stock COSE library (pycose) and a
stock CBOR decoder (cbor2), so the interop test (tests/interop_v2.rs) proves
that the document is enough and that the gateway speaks standard COSE in
both directions.

  open MESSAGES GATEWAY.pub RECIPIENT.key  > records
      MESSAGES is a file (`-`: standard input) holding a CBOR sequence of
      sealed messages (RFC 8742: one after another, nothing between them).
      Verifies and decrypts each and prints one JSON object per record, as
      `sensorgate open` does; a gap notice (no records) prints a
      `declared: ...` line on stderr. At the first message that fails a check it
      prints `rejected message N: REASON` on stderr and stops with exit
      code 65; records of the messages before it have been printed.

  seal RECORDS GATEWAY.key RECIPIENT.pub --epoch EPOCH
       [--encrypt NAME[,NAME...]] [--batch N] [--out FILE]
      Seals records (JSON lines in the shape `open` prints; RECORDS `-` is
      standard input) into a CBOR sequence of sealed messages on stdout (or
      FILE): consecutive records of one (gateway, sensor) with consecutive
      seq, at most N per message. One data key (ephemeral key, CEK, IV
      prefix and counter) for the whole run, as the gateway does.

  notice GATEWAY.key --gateway G --sensor S --epoch E --seq FIRST LAST
         --lost N [--exact] [--cause CAUSE] [--out FILE]
      Seals a gap notice (FORMAT.md, Gap notices): one message on stdout
      (or FILE).

  tamper MESSAGES GATEWAY.key WHAT [--out FILE]
      A test aid: changes one thing in every sealed message of the CBOR
      sequence MESSAGES and writes them out again (stdout, or FILE). WHAT
      is `signature` (one byte of the signature), or, signed again with
      GATEWAY.key so that only the encryption can tell: `ciphertext` (one
      byte of the COSE_Encrypt ciphertext), `wrapped-key` (one byte of the
      recipient's wrapped key) or `move-enc` (each message with an `enc`
      gets the next such message's: the external AAD no longer matches).
      Messages without `enc` are copied as they are, except for
      `signature`.

Nothing here depends on the order of members in a CBOR map: maps are read
into dicts and their keys checked as sets. The producer writes its maps in
an order of its own (headers reversed, the payload in cbor2's canonical
order, not FORMAT.md's table order) to keep the gateway honest about it.

Duplicate and gap tracking is left out: this is about the format.
"""

import argparse
import base64
import datetime
import hashlib
import json
import math
import os
import struct
import sys
from decimal import Decimal

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pycose.algorithms import A256GCM, EcdhEsA256KW, Es256
from pycose.headers import KID, IV, Algorithm, EphemeralKey, StaticKey
from pycose.keys import CoseKey, EC2Key
from pycose.messages import EncMessage, Sign1Message
from pycose.messages.recipient import KeyAgreementWithKeyWrap

EX_DATAERR = 65
FORMAT_VERSION = 2
# COSE header labels and values (RFC 9052 §3.1, RFC 9053, RFC 9596).
H_ALG, H_KID, H_IV, H_TYP, H_EPK = 1, 4, 5, 16, -1
ALG_ES256, ALG_A256GCM, ALG_ECDH_ES_A256KW = -7, 3, -31
TYP = "application/sensorgate+cbor"
TIME_UNITS = (0, 3, 6, 9)
MAX_RECORDS = 2**32 - 1
MAX_MESSAGE = 16 * 1024 * 1024
# A cell of a record that has no field of the column's name (`undefined`).
ABSENT = object()


class Rejected(Exception):
    """A message that fails one of FORMAT.md's checks."""


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def p256_xy(key):
    """The 32-byte x and y of a P-256 key (public or private)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise SystemExit("error: keys must be NIST P-256 (secp256r1)")
    nums = pub.public_numbers()
    return nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")


def thumbprint(key):
    """The RFC 7638 JWK thumbprint: 32 bytes (FORMAT.md, Keys and kid)."""
    x, y = p256_xy(key)
    jwk = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (b64u(x), b64u(y))
    return hashlib.sha256(jwk.encode("utf-8")).digest()


def read_pem(path):
    with open(path, "rb") as f:
        return f.read()


def load_public(path):
    """(pycose key, kid) of an SPKI PEM public key."""
    pem = read_pem(path)
    kid = thumbprint(load_pem_public_key(pem))
    return CoseKey.from_pem_public_key(pem.decode("ascii")), kid


def load_private(path):
    """(pycose key, kid) of a PKCS#8 PEM private key."""
    pem = read_pem(path)
    kid = thumbprint(load_pem_private_key(pem, password=None))
    return CoseKey.from_pem_private_key(pem.decode("ascii")), kid


# ---------------------------------------------------------------------------
# CBOR: item boundaries and duplicate map keys
# ---------------------------------------------------------------------------
#
# cbor2 (the version pycose works with) keeps the last of two equal map keys
# without a word. Two decoders that disagree on which one counts would read
# different data out of one signed message, so every CBOR item is walked
# once before cbor2 decodes it: well-formed, one item, no map with the same
# key twice. The walk also finds where each message of the sequence ends.


def _head(data, pos):
    if pos >= len(data):
        raise Rejected(f"CBOR ends early at byte {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info == 31:
        if major in (0, 1, 6):
            raise Rejected(f"CBOR item at byte {pos - 1} is not well-formed")
        return major, None, pos  # indefinite length, or a break (major 7)
    if info > 27:
        raise Rejected(f"CBOR item at byte {pos - 1} uses a reserved value")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise Rejected(f"CBOR ends early at byte {len(data)}")
    return major, int.from_bytes(data[pos:pos + size], "big"), pos + size


def _is_break(data, pos):
    if pos >= len(data):
        raise Rejected(f"CBOR ends early at byte {pos}")
    return data[pos] == 0xFF


def cbor_skip(data, pos, depth=0, tags=None):
    """The end of the well-formed CBOR item starting at `pos`. With `tags`, a
    tag is allowed only around the whole item and only one of those: cbor2
    would silently turn a bignum (tags 2 and 3) into an integer, where
    FORMAT.md has an integer (major types 0 and 1) or nothing."""
    if depth > 32:
        raise Rejected("CBOR nested too deeply")
    start = pos
    major, arg, pos = _head(data, pos)
    if major == 7:
        if arg is None:
            raise Rejected(f"CBOR break at byte {start} outside an indefinite item")
        return pos
    if major in (0, 1):
        return pos
    if major in (2, 3):
        if arg is not None:
            if pos + arg > len(data):
                raise Rejected(f"CBOR ends early at byte {len(data)}")
            return pos + arg
        while not _is_break(data, pos):
            m, a, pos = _head(data, pos)
            if m != major or a is None:
                raise Rejected(f"CBOR indefinite string at byte {start} has a bad chunk")
            pos += a
        return pos + 1
    if major == 6:
        if tags is not None and (depth > 0 or arg not in tags):
            raise Rejected(f"CBOR tag {arg} at byte {start}, where FORMAT.md has none")
        return cbor_skip(data, pos, depth + 1, tags)
    if major == 4:
        count = 0
        while (count < arg) if arg is not None else not _is_break(data, pos):
            pos = cbor_skip(data, pos, depth + 1, tags)
            count += 1
        return pos if arg is not None else pos + 1
    # major 5: a map
    keys, count = set(), 0
    while (count < arg) if arg is not None else not _is_break(data, pos):
        key_start = pos
        pos = cbor_skip(data, pos, depth + 1, tags)
        key = cbor2.loads(data[key_start:pos])
        if type(key) not in (int, str):
            raise Rejected(f"CBOR map at byte {start} has a key that is not an integer or text")
        if (type(key), key) in keys:
            raise Rejected(f"CBOR map at byte {start} has the key {key!r} twice")
        keys.add((type(key), key))
        pos = cbor_skip(data, pos, depth + 1, tags)
        count += 1
    return pos if arg is not None else pos + 1


def cbor_decode(data, what, tag=None):
    """cbor2.loads of exactly one well-formed item without duplicate map keys,
    and no tag but `tag` around the whole item."""
    if not isinstance(data, bytes):
        raise Rejected(f"{what} is not a byte string")
    if cbor_skip(data, 0, tags=() if tag is None else (tag,)) != len(data):
        raise Rejected(f"{what}: bytes after the end of the CBOR item")
    try:
        return cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types
        raise Rejected(f"{what} is not CBOR: {e}")


def cbor_sequence(data):
    """Splits a CBOR sequence into its items' bytes; a bad item is yielded as
    an exception in its place, and ends the sequence."""
    pos = 0
    while pos < len(data):
        try:
            end = cbor_skip(data, pos)
        except Rejected as e:
            yield e
            return
        yield data[pos:end]
        pos = end


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


def is_int(v):
    return type(v) is int


def is_uint64(v):
    return is_int(v) and 0 <= v < 2**64


def is_bytes(v, n=None):
    return type(v) is bytes and (n is None or len(v) == n)


def exact_keys(obj, keys, what):
    if not isinstance(obj, dict) or set(obj) != set(keys):
        got = sorted(map(repr, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise Rejected(f"{what} must have exactly the keys {sorted(map(repr, keys))}, has {got}")


def rust_float(x):
    """A finite float as Rust's serde_json writes it: the shortest digits that
    read back, `2.0`, `15.37`, `0.00001`, `1e-6`, `1.5e+300` (serde_json
    1.0.154, with zmij; ryu, before it, wrote `1.5e300`); null otherwise."""
    if not math.isfinite(x):
        return "null"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0.0"
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits, k = (whole + frac).lstrip("0"), (int(exp) if exp else 0) - len(frac)
    while digits.endswith("0"):
        digits, k = digits[:-1], k + 1
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= |x| < 10^kk
    if 0 <= k and kk <= 16:
        return sign + digits + "0" * k + ".0"
    if 0 < kk <= 16:
        return sign + digits[:kk] + "." + digits[kk:]
    if -5 < kk <= 0:
        return sign + "0." + "0" * -kk + digits
    exponent = f"e{kk - 1}" if kk <= 0 else f"e+{kk - 1}"
    if length == 1:
        return sign + digits + exponent
    return f"{sign}{digits[0]}.{digits[1:]}{exponent}"


def json_value(v):
    """A field value as `sensorgate open` prints it (serde_json)."""
    if v is None or v is True or v is False:
        return json.dumps(v)
    if is_int(v):
        return str(v)
    if type(v) is float:
        return rust_float(v)
    if type(v) is str:
        # serde_json and json.dumps(ensure_ascii=False) escape the same
        # characters the same way: " \ and U+0000..U+001F (\n, \t, ...,
        # \u001f), nothing else.
        return json.dumps(v, ensure_ascii=False)
    raise TypeError(f"no JSON for {v!r}")


def record_line(gateway, sensor, seq, ts, fields, synced=True):
    inner = ",".join(f"{json_value(name)}:{json_value(value)}" for name, value in fields)
    unsynced = "" if synced else '"ts_synced":false,'
    return (f'{{"gateway":{json_value(gateway)},"sensor":{json_value(sensor)},'
            f'"seq":{seq},"ts":"{ts}",{unsynced}"fields":{{{inner}}}}}')


EPOCH = datetime.datetime(1970, 1, 1)


def format_ts(units, tu):
    """RFC 3339 UTC with nine fraction digits, as `sensorgate open` prints."""
    secs, frac = divmod(units, 10**tu)
    if secs < 0:
        raise Rejected(f"a timestamp before 1970 ({units} units of 1e-{tu} s)")
    try:
        t = EPOCH + datetime.timedelta(seconds=secs)
    except OverflowError:
        raise Rejected(f"a timestamp after 9999 ({units} units of 1e-{tu} s)")
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}.{frac * 10**(9 - tu):09d}Z")


def parse_ts(text):
    """Nanoseconds since 1970 of a timestamp `open` prints."""
    if len(text) != 30 or text[19] != "." or text[29] != "Z":
        raise ValueError(f"not an RFC 3339 UTC time with nine fraction digits: {text!r}")
    t = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    delta = t - EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**9 + int(text[20:29])


# ---------------------------------------------------------------------------
# open
# ---------------------------------------------------------------------------


def check_column(col, n, what):
    """(name, values) of a column: ABSENT for an `undefined` cell, the
    field's value otherwise (None for a null cell: a non-finite float)."""
    if not isinstance(col, list) or len(col) not in (2, 3):
        raise Rejected(f"{what} is not an array of 2 or 3")
    name, cells = col[0], col[1]
    if type(name) is not str:
        raise Rejected(f"{what}: the name is not text")
    if not isinstance(cells, list) or len(cells) != n:
        raise Rejected(f"column {name!r}: not an array of {n} cells")
    values = []
    if len(col) == 3:
        e = col[2]
        if not is_int(e) or not -22 <= e <= 0:
            raise Rejected(f"column {name!r}: decimal exponent {e!r} not an integer in -22..=0")
        for m in cells:
            if m is cbor2.undefined:
                values.append(ABSENT)
            elif is_int(m) and abs(m) < 2**53:
                # m / 10^-e with both exact: one rounding, as FORMAT.md says
                # (Python's int / int is correctly rounded).
                values.append(m / 10 ** -e)
            else:
                raise Rejected(f"column {name!r}: decimal cell {m!r} is not an integer below 2^53")
        return name, values
    for cell in cells:
        if cell is cbor2.undefined:
            values.append(ABSENT)
        elif is_int(cell):
            # The gateway writes 64-bit signed integers; `sensorgate open`
            # takes any 64-bit integer (unsigned up to 2^64 - 1).
            if not -(2**63) <= cell < 2**64:
                raise Rejected(f"column {name!r}: integer {cell} is outside -2^63 ..= 2^64 - 1")
            values.append(cell)
        elif type(cell) in (float, str, bool) or cell is None:
            values.append(cell)
        else:
            raise Rejected(f"column {name!r}: a cell of type {type(cell).__name__}")
    return name, values



def open_message(raw, gateway_key, gateway_kid, recipient_key, recipient_kid):
    """(the records of one sealed message as JSON lines, the stderr line of a
    gap notice or None), or raises Rejected."""
    # 1. A tag 18 around [protected bstr, {}, payload bstr, 64-byte signature].
    outer = cbor_decode(raw, "the message", tag=18)
    # Tag 18 in its shortest form: `sensorgate open` tells a version 2
    # message by its first byte, 0xd2.
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != 18 or raw[0] != 0xD2:
        raise Rejected("not a COSE_Sign1 (CBOR tag 18)")
    body = outer.value
    if not isinstance(body, list) or len(body) != 4:
        raise Rejected("the COSE_Sign1 is not an array of four")
    protected, unprotected, payload_bytes, signature = body
    if not is_bytes(protected) or not is_bytes(payload_bytes):
        raise Rejected("the protected header or payload is not a byte string")
    if unprotected != {}:
        raise Rejected(f"the unprotected header is not an empty map: {unprotected!r}")
    if not is_bytes(signature, 64):
        raise Rejected("the signature is not 64 bytes")
    # 2. Exactly alg ES256, typ and a trusted kid.
    header = cbor_decode(protected, "the protected header")
    exact_keys(header, [H_ALG, H_KID, H_TYP], "the protected header")
    if not is_int(header[H_ALG]) or header[H_ALG] != ALG_ES256:
        raise Rejected(f"alg {header[H_ALG]!r} is not ES256 (-7)")
    if header[H_TYP] != TYP:
        raise Rejected(f"typ {header[H_TYP]!r} is not {TYP!r}")
    if header[H_KID] != gateway_kid:
        kid = header[H_KID].hex() if is_bytes(header[H_KID]) else repr(header[H_KID])
        raise Rejected(f"kid {kid} is not a trusted gateway key")
    # 3. The signature, by pycose, before anything in the payload is looked at.
    try:
        msg = Sign1Message.decode(raw)
        msg.key = gateway_key
        good = msg.verify_signature()
    except Exception as e:
        raise Rejected(f"cannot verify the signature: {type(e).__name__}: {e}")
    if not good:
        raise Rejected("bad signature")
    # 4. The payload: a gap notice (it has a `notice`) or a batch.
    payload = cbor_decode(msg.payload, "the payload")
    if isinstance(payload, dict) and "notice" in payload:
        return [], check_notice(payload)
    base = ["v", "gateway", "sensor", "epoch", "seq", "tu", "t", "cols"]
    if isinstance(payload, dict) and ("enc" in payload or "ep" in payload):
        base += ["ep", "enc"]
    if isinstance(payload, dict) and "clock" in payload:
        base += ["clock"]
    exact_keys(payload, base, "the payload")
    if not is_int(payload["v"]) or payload["v"] != FORMAT_VERSION:
        raise Rejected(f"v {payload['v']!r} is not {FORMAT_VERSION}")
    for name in ("gateway", "sensor", "epoch"):
        if type(payload[name]) is not str:
            raise Rejected(f"{name} is not text")
    first, last = check_seq(payload["seq"])
    n = last - first + 1
    if n > MAX_RECORDS:
        raise Rejected(f"{n} records in one batch")
    tu, t = payload["tu"], payload["t"]
    if not is_int(tu) or tu not in TIME_UNITS:
        raise Rejected(f"tu {tu!r} is not 0, 3, 6 or 9")
    if not isinstance(t, list) or len(t) != n or not all(map(is_int, t)):
        raise Rejected(f"t is not an array of {n} integers")
    if not isinstance(payload["cols"], list):
        raise Rejected("cols is not an array")
    clear = [check_column(c, n, f"clear column {i}") for i, c in enumerate(payload["cols"])]
    # The clock (FORMAT.md, Time): [synced, boot id, boot clock ms].
    synced = True
    if "clock" in payload:
        clock = payload["clock"]
        if not (isinstance(clock, list) and len(clock) == 3 and type(clock[0]) is bool
                and type(clock[1]) is bytes and len(clock[1]) == 16 and is_uint64(clock[2])):
            raise Rejected(f"clock {clock!r} is not [synced, 16-byte boot id, ms]")
        synced = clock[0]
    # 5. The COSE_Encrypt.
    hidden, ep = [], []
    if "enc" in payload:
        ep = payload["ep"]
        if not (isinstance(ep, list) and ep and all(map(is_uint64, ep))
                and all(a < b for a, b in zip(ep, ep[1:]))):
            raise Rejected(f"ep {ep!r} is not a non-empty strictly increasing array of positions")
        aad = cbor2.dumps([payload["gateway"], payload["sensor"], payload["epoch"], first, last])
        plaintext = open_enc(payload["enc"], aad, recipient_key, recipient_kid)
        columns = cbor_decode(plaintext, "the plaintext")
        if not isinstance(columns, list) or len(columns) != len(ep):
            raise Rejected(f"the plaintext is not an array of {len(ep)} columns")
        hidden = [check_column(c, n, f"encrypted column {i}") for i, c in enumerate(columns)]
    total = len(clear) + len(hidden)
    if ep and ep[-1] >= total:
        raise Rejected(f"ep position {ep[-1]} is past the last of {total} columns")
    # The record's column order: clear and encrypted columns merged by ep.
    clear_it, hidden_it, positions = iter(clear), iter(hidden), set(ep)
    order = [next(hidden_it) if i in positions else next(clear_it) for i in range(total)]
    names = [name for name, _ in order]
    if len(set(names)) != len(names):
        raise Rejected("a column name appears twice")
    # Records.
    out, units = [], 0
    for i in range(n):
        units += t[i]
        ts = format_ts(units, tu)
        fields = [(name, values[i]) for name, values in order if values[i] is not ABSENT]
        out.append(record_line(payload["gateway"], payload["sensor"], first + i, ts, fields, synced))
    return out, None


def check_seq(seq):
    if not (isinstance(seq, list) and len(seq) == 2 and all(map(is_uint64, seq)) and seq[0] <= seq[1]):
        raise Rejected(f"seq {seq!r} is not [first, last] with first <= last")
    return seq


def check_notice(payload):
    """The stderr line for a gap notice (FORMAT.md, Gap notices)."""
    exact_keys(payload, ["v", "gateway", "sensor", "epoch", "seq", "notice", "cause", "lost", "exact"],
               "the gap notice")
    if not is_int(payload["v"]) or payload["v"] != FORMAT_VERSION:
        raise Rejected(f"v {payload['v']!r} is not {FORMAT_VERSION}")
    for name in ("gateway", "sensor", "epoch", "cause"):
        if type(payload[name]) is not str:
            raise Rejected(f"{name} is not text")
    if payload["notice"] != "gap":
        raise Rejected(f"notice {payload['notice']!r} is not \"gap\"")
    first, last = check_seq(payload["seq"])
    n, lost, exact = last - first + 1, payload["lost"], payload["exact"]
    if not is_uint64(lost) or lost > n:
        raise Rejected(f"lost {lost!r} is not an unsigned integer up to {n}")
    if type(exact) is not bool or (exact and lost != n):
        raise Rejected(f"exact {exact!r} with lost {lost} of {n}")
    what = f"{lost} records lost" if exact else f"at most {lost} records lost"
    tail = "" if exact else ", the other numbers never used"
    return (f"declared: {payload['gateway']}/{payload['sensor']} epoch {payload['epoch']}: "
            f"seq {first}..{last} will not arrive: {what} ({payload['cause']}){tail}")


def open_enc(enc, aad, recipient_key, recipient_kid):
    """The plaintext of the payload's `enc`, decrypted by pycose."""
    if not is_bytes(enc):
        raise Rejected("enc is not a byte string")
    outer = cbor_decode(enc, "enc", tag=96)
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != 96:
        raise Rejected("enc is not a COSE_Encrypt (CBOR tag 96)")
    body = outer.value
    if not isinstance(body, list) or len(body) != 4:
        raise Rejected("the COSE_Encrypt is not an array of four")
    protected, unprotected, ciphertext, recipients = body
    e_header = cbor_decode(protected, "the COSE_Encrypt protected header")
    exact_keys(e_header, [H_ALG], "the COSE_Encrypt protected header")
    if not is_int(e_header[H_ALG]) or e_header[H_ALG] != ALG_A256GCM:
        raise Rejected("the COSE_Encrypt alg is not A256GCM (3)")
    exact_keys(unprotected, [H_IV], "the COSE_Encrypt unprotected header")
    if not is_bytes(unprotected[H_IV], 12):
        raise Rejected("the iv is not 12 bytes")
    if not is_bytes(ciphertext) or len(ciphertext) < 16:
        raise Rejected("the ciphertext is not a byte string of at least 16 bytes")
    if not isinstance(recipients, list) or len(recipients) != 1:
        raise Rejected("the COSE_Encrypt has not exactly one recipient")
    recipient = recipients[0]
    if not isinstance(recipient, list) or len(recipient) != 3:
        raise Rejected("the recipient is not an array of three")
    r_protected, r_unprotected, wrapped = recipient
    r_header = cbor_decode(r_protected, "the recipient protected header")
    exact_keys(r_header, [H_ALG], "the recipient protected header")
    if not is_int(r_header[H_ALG]) or r_header[H_ALG] != ALG_ECDH_ES_A256KW:
        raise Rejected("the recipient alg is not ECDH-ES + A256KW (-31)")
    exact_keys(r_unprotected, [H_EPK, H_KID], "the recipient unprotected header")
    epk = r_unprotected[H_EPK]
    exact_keys(epk, [1, -1, -2, -3], "the ephemeral key")
    if epk[1] != 2 or epk[-1] != 1 or not is_int(epk[1]) or not is_int(epk[-1]):
        raise Rejected("the ephemeral key is not EC2 (1: 2) on P-256 (-1: 1)")
    if not is_bytes(epk[-2], 32) or not is_bytes(epk[-3], 32):
        raise Rejected("the ephemeral key's x and y are not 32 bytes each")
    if r_unprotected[H_KID] != recipient_kid:
        kid = r_unprotected[H_KID]
        raise Rejected(f"encrypted for another recipient (kid {kid.hex() if is_bytes(kid) else repr(kid)})")
    if not is_bytes(wrapped, 40):
        raise Rejected("the wrapped key is not 40 bytes")
    try:
        msg = EncMessage.decode(enc)
        msg.external_aad = aad
        r = msg.recipients[0]
        r.key = recipient_key
        return msg.decrypt(r)
    except Exception as e:  # cryptography's InvalidTag, InvalidUnwrap, ValueError, ...
        why = {"InvalidUnwrap": "the wrapped key does not unwrap (AES key wrap integrity check)",
               "InvalidTag": "the AES-GCM tag does not verify (ciphertext or external AAD changed)"}
        raise Rejected(f"cannot decrypt: {why.get(type(e).__name__, f'{type(e).__name__}: {e}')}")


def read_input(path):
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def cmd_open(args):
    gateway_key, gateway_kid = load_public(args.gateway_pub)
    recipient_key, recipient_kid = load_private(args.recipient_key)
    data = read_input(args.messages)
    opened = records = 0
    for number, raw in enumerate(cbor_sequence(data), start=1):
        try:
            if isinstance(raw, Exception):
                raise raw
            if len(raw) > MAX_MESSAGE:
                raise Rejected(f"{len(raw)} bytes, over {MAX_MESSAGE}")
            lines, notice = open_message(raw, gateway_key, gateway_kid, recipient_key, recipient_kid)
        except Exception as e:  # any failure rejects the message, with a reason
            sys.stdout.flush()
            reason = str(e) if isinstance(e, Rejected) else f"{type(e).__name__}: {e}"
            print(f"rejected message {number}: {reason}", file=sys.stderr)
            return EX_DATAERR
        opened += 1
        records += len(lines)
        for line in lines:
            print(line)
        if notice:
            sys.stdout.flush()
            print(notice, file=sys.stderr)
    print(f"opened {opened} messages, {records} records", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# seal
# ---------------------------------------------------------------------------


def same_float(a, b):
    return struct.pack("<d", a) == struct.pack("<d", b)


def decimal_exponent(values):
    """The e (<= 0) of a decimal column for these floats, or None when they
    do not all fit one: m / 10^-e must give each value back exactly."""
    if not values or not all(type(v) is float and math.isfinite(v) for v in values):
        return None
    for k in range(0, 10):
        ok = True
        for v in values:
            d = Decimal(repr(v))
            if d.as_tuple().exponent < -k:
                ok = False
                break
            m = int(d.scaleb(k))
            if abs(m) >= 2**53 or not same_float(m / 10**k, v):
                ok = False
                break
        if ok:
            return -k
    return None


def encode_column(name, cells):
    """A column for cells (ABSENT for a record without the field)."""
    present = [c for c in cells if c is not ABSENT]
    e = decimal_exponent(present)
    if e is not None:
        out = [cbor2.undefined if c is ABSENT else int(Decimal(repr(c)).scaleb(-e)) for c in cells]
        return [name, out, e]
    return [name, [cbor2.undefined if c is ABSENT else c for c in cells]]


def coarsest_unit(stamps):
    for tu in TIME_UNITS:
        if all(s % 10 ** (9 - tu) == 0 for s in stamps):
            return tu
    raise AssertionError("nanoseconds always fit")


class DataKey:
    """One data key (FORMAT.md, Data keys): an ephemeral key, a CEK, and the
    IV prefix and counter, reused for every message of this run."""

    def __init__(self, recipient_pub, recipient_kid):
        self.recipient_pub = recipient_pub
        self.recipient_kid = recipient_kid
        self.ephemeral = EC2Key.generate_key(crv="P_256")
        self.cek = os.urandom(32)
        self.prefix = os.urandom(4)
        self.counter = 0

    def encrypt(self, plaintext, aad):
        iv = self.prefix + self.counter.to_bytes(8, "big")
        self.counter += 1
        recipient = KeyAgreementWithKeyWrap(phdr={Algorithm: EcdhEsA256KW}, uhdr={KID: self.recipient_kid},
                                            payload=self.cek)
        # pycose would make a new ephemeral key per message (and write it with
        # its own member order); the data key's is given, members reversed.
        recipient.uhdr_update({EphemeralKey: {-3: self.ephemeral.y, -2: self.ephemeral.x, -1: 1, 1: 2}})
        recipient.key = self.ephemeral
        recipient.local_attrs = {StaticKey: self.recipient_pub}
        msg = EncMessage(phdr={Algorithm: A256GCM}, uhdr={IV: iv}, payload=plaintext,
                         external_aad=aad, recipients=[recipient])
        return msg.encode(tag=True)


def seal_batch(batch, signing_key, signing_kid, data_key, epoch, encrypt):
    gateway, sensor = batch[0]["gateway"], batch[0]["sensor"]
    first, last = batch[0]["seq"], batch[-1]["seq"]
    n = len(batch)
    stamps = [parse_ts(r["ts"]) for r in batch]
    tu = coarsest_unit(stamps)
    units = [s // 10 ** (9 - tu) for s in stamps]
    t = [units[0]] + [b - a for a, b in zip(units, units[1:])]
    # Column order: the order the batch first met each name.
    names = []
    for r in batch:
        for name in r["fields"]:
            if name not in names:
                names.append(name)
    cols, hidden, ep = [], [], []
    for pos, name in enumerate(names):
        column = encode_column(name, [r["fields"].get(name, ABSENT) for r in batch])
        if name in encrypt:
            hidden.append(column)
            ep.append(pos)
        else:
            cols.append(column)
    payload = {"v": FORMAT_VERSION, "gateway": gateway, "sensor": sensor, "epoch": epoch,
               "seq": [first, last], "tu": tu, "t": t, "cols": cols}
    if hidden:
        aad = cbor2.dumps([gateway, sensor, epoch, first, last])
        # canonical: the shortest float that holds each value (half, single
        # or double), as FORMAT.md allows.
        payload["ep"] = ep
        payload["enc"] = data_key.encrypt(cbor2.dumps(hidden, canonical=True), aad)
    assert len(t) == n
    # canonical also sorts the keys (length first): not FORMAT.md's order.
    payload_bytes = cbor2.dumps(payload, canonical=True)
    msg = Sign1Message(phdr={H_TYP: TYP, KID: signing_kid, Algorithm: Es256}, uhdr={},
                       payload=payload_bytes, key=signing_key)
    return msg.encode(tag=True)


def cmd_notice(args):
    signing_key, signing_kid = load_private(args.gateway_key)
    first, last = args.seq
    payload = {"v": FORMAT_VERSION, "gateway": args.gateway, "sensor": args.sensor, "epoch": args.epoch,
               "seq": [first, last], "notice": "gap", "cause": args.cause, "lost": args.lost,
               "exact": args.exact}
    msg = Sign1Message(phdr={H_TYP: TYP, KID: signing_kid, Algorithm: Es256}, uhdr={},
                       payload=cbor2.dumps(payload, canonical=True), key=signing_key)
    with (open(args.out, "wb") if args.out else sys.stdout.buffer) as f:
        f.write(msg.encode(tag=True))
    return 0


def cmd_seal(args):
    signing_key, signing_kid = load_private(args.gateway_key)
    recipient_pub, recipient_kid = load_public(args.recipient_pub)
    data_key = DataKey(recipient_pub, recipient_kid)
    encrypt = set(filter(None, args.encrypt.split(",")))
    text = read_input(args.records).decode("utf-8")
    out = open(args.out, "wb") if args.out else sys.stdout.buffer
    batch, count = [], 0

    def flush():
        nonlocal count
        if batch:
            out.write(seal_batch(batch, signing_key, signing_kid, data_key, args.epoch, encrypt))
            count += 1
            batch.clear()

    for line in text.split("\n"):  # not splitlines(): U+2028 is no line end here
        if not line.strip():
            continue
        r = json.loads(line)
        if batch and ((r["gateway"], r["sensor"]) != (batch[0]["gateway"], batch[0]["sensor"])
                      or r["seq"] != batch[-1]["seq"] + 1 or len(batch) >= args.batch):
            flush()
        batch.append(r)
    flush()
    out.flush()
    print(f"sealed {count} messages", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# tamper (a test aid)
# ---------------------------------------------------------------------------


def flip(raw, at=None):
    """raw with the byte in the middle (or at `at`) changed."""
    at = len(raw) // 2 if at is None else at
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


def resign(payload, signing_key, signing_kid):
    msg = Sign1Message(phdr={H_TYP: TYP, KID: signing_kid, Algorithm: Es256}, uhdr={},
                       payload=cbor2.dumps(payload, canonical=True), key=signing_key)
    return msg.encode(tag=True)


def cmd_tamper(args):
    signing_key, signing_kid = load_private(args.gateway_key)
    messages = list(cbor_sequence(read_input(args.messages)))
    for m in messages:
        if isinstance(m, Exception):
            raise m
    parsed = [cbor2.loads(m) for m in messages]
    payloads = [cbor2.loads(p.value[2]) for p in parsed]
    with_enc = [i for i, p in enumerate(payloads) if "enc" in p]
    if args.what != "signature" and len(with_enc) < (2 if args.what == "move-enc" else 1):
        raise SystemExit(f"error: {args.what} needs {'two messages' if args.what == 'move-enc' else 'a message'} with enc")
    out = []
    for i, (raw, sign1, payload) in enumerate(zip(messages, parsed, payloads)):
        if args.what == "signature":
            sign1.value[3] = flip(sign1.value[3])
            out.append(cbor2.dumps(sign1))
            continue
        if "enc" not in payload:
            out.append(raw)  # nothing to change
            continue
        if args.what == "move-enc":
            other = payloads[with_enc[(with_enc.index(i) + 1) % len(with_enc)]]
            if len(other["ep"]) != len(payload["ep"]):
                raise SystemExit("error: move-enc needs messages with as many encrypted columns")
            payload["enc"] = other["enc"]
        else:
            enc = cbor2.loads(payload["enc"])
            if args.what == "ciphertext":
                enc.value[2] = flip(enc.value[2])
            else:
                enc.value[3][0][2] = flip(enc.value[3][0][2])
            payload["enc"] = cbor2.dumps(enc)
        out.append(resign(payload, signing_key, signing_kid))
    with (open(args.out, "wb") if args.out else sys.stdout.buffer) as f:
        f.write(b"".join(out))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("open", help="verify and decrypt a CBOR sequence of sealed messages")
    o.add_argument("messages", help="the CBOR sequence (a file, or - for standard input)")
    o.add_argument("gateway_pub", help="the gateway's public key (SPKI PEM)")
    o.add_argument("recipient_key", help="the recipient's private key (PKCS#8 PEM)")
    s = sub.add_parser("seal", help="seal records into a CBOR sequence of sealed messages")
    s.add_argument("records", help="JSON lines as `open` prints them (a file, or - for standard input)")
    s.add_argument("gateway_key", help="the gateway's private key (PKCS#8 PEM)")
    s.add_argument("recipient_pub", help="the recipient's public key (SPKI PEM)")
    s.add_argument("--epoch", required=True)
    s.add_argument("--encrypt", default="", help="comma-separated field names to encrypt")
    s.add_argument("--batch", type=int, default=10, help="most records per message")
    s.add_argument("--out", help="write the messages here instead of standard output")
    n = sub.add_parser("notice", help="seal a gap notice")
    n.add_argument("gateway_key", help="the gateway's private key (PKCS#8 PEM)")
    n.add_argument("--gateway", required=True)
    n.add_argument("--sensor", required=True)
    n.add_argument("--epoch", required=True)
    n.add_argument("--seq", type=int, nargs=2, required=True, metavar=("FIRST", "LAST"))
    n.add_argument("--lost", type=int, required=True)
    n.add_argument("--exact", action="store_true")
    n.add_argument("--cause", default="unclean-stop")
    n.add_argument("--out", help="write the message here instead of standard output")
    t = sub.add_parser("tamper", help="change one thing in every sealed message (a test aid)")
    t.add_argument("messages", help="the CBOR sequence (a file, or - for standard input)")
    t.add_argument("gateway_key", help="the gateway's private key (PKCS#8 PEM), to sign again")
    t.add_argument("what", choices=["signature", "ciphertext", "wrapped-key", "move-enc"])
    t.add_argument("--out", help="write the messages here instead of standard output")
    args = parser.parse_args()
    commands = {"open": cmd_open, "seal": cmd_seal, "notice": cmd_notice, "tamper": cmd_tamper}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
