#!/usr/bin/env python3
"""An independent consumer and producer of sensorgate sealed messages.

Written from docs/FORMAT-v1.md alone, on a stock JOSE library (jwcrypto), so
the interop test (tests/interop.rs) proves that the document is enough and
that the gateway speaks standard JOSE in both directions.

  open --trust GATEWAY.pub --recipient-key RECIPIENT.key  < messages > records
      Verifies and decrypts sealed messages (one per line) and prints one
      JSON object per record, as `sensorgate open` does. A message that fails
      a check prints `rejected message at line N: REASON` on stderr and none
      of its records; the exit code is then 65.

  seal --signing-key GATEWAY.key --recipient-pub RECIPIENT.pub
       --epoch EPOCH --encrypt NAME[,NAME...] [--batch N]  < records > messages
      Seals records (JSON lines in the shape `open` prints) into sealed
      messages, one per line: consecutive records of one (gateway, sensor)
      with consecutive seq, at most N per message.

Duplicate and gap tracking is left out: this is about the format.
"""

import argparse
import base64
import binascii
import json
import re
import sys

from jwcrypto import jwa, jwe, jwk, jws

JWS_TYP = "sensorgate-sealed+json"
JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
EX_DATAERR = 65
B64U = re.compile(r"[A-Za-z0-9_-]*")


class Rejected(Exception):
    """A message that fails one of FORMAT.md's checks."""


def b64u_decode(text, what):
    """Strict base64url without padding (FORMAT.md, Transport)."""
    if not isinstance(text, str) or not B64U.fullmatch(text) or len(text) % 4 == 1:
        raise Rejected(f"{what} is not strict base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u_encode(raw) != text:  # non-zero trailing bits
        raise Rejected(f"{what} is not strict base64url (trailing bits)")
    return raw


def b64u_encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def load_key(path):
    with open(path, "rb") as f:
        return jwk.JWK.from_pem(f.read())


def exact_members(obj, names, what):
    if not isinstance(obj, dict) or set(obj) != set(names):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise Rejected(f"{what} must have exactly {sorted(names)}, has {got}")


def is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


# ---------------------------------------------------------------------------
# open
# ---------------------------------------------------------------------------


def open_message(line, gateway_key, recipient_key):
    """Returns the records of one sealed message, or raises Rejected."""
    # 1. Exactly protected, payload, signature; strict base64url.
    try:
        outer = json.loads(line)
    except ValueError as e:
        raise Rejected(f"not JSON: {e}")
    exact_members(outer, ["protected", "payload", "signature"], "the JWS")
    header = json.loads(b64u_decode(outer["protected"], "JWS protected"))
    b64u_decode(outer["payload"], "JWS payload")
    if len(b64u_decode(outer["signature"], "JWS signature")) != 64:
        raise Rejected("the signature is not 64 bytes (r || s)")
    # 2. The header: exactly alg, kid, typ; a trusted kid.
    exact_members(header, ["alg", "kid", "typ"], "the JWS header")
    if header["alg"] != "ES256" or header["typ"] != JWS_TYP:
        raise Rejected(f"JWS alg/typ not ES256/{JWS_TYP}: {header}")
    if header["kid"] != gateway_key.thumbprint():
        raise Rejected(f"unknown kid {header['kid']}")
    # 3. The signature, before anything in the payload is looked at.
    signed = jws.JWS()
    try:
        signed.deserialize(line)
        signed.verify(gateway_key, alg="ES256")
    except Exception as e:  # jwcrypto raises several types
        raise Rejected(f"bad signature: {type(e).__name__}: {e}")
    payload = json.loads(signed.payload)
    # 4. v = 1; records exactly seq[0] ..= seq[1].
    if not isinstance(payload, dict) or payload.get("v") != 1:
        raise Rejected("payload v is not 1")
    allowed = {"v", "gateway", "sensor", "epoch", "seq", "records", "jwe"}
    if not allowed >= set(payload) or not allowed - {"jwe"} <= set(payload):
        raise Rejected(f"payload members {sorted(payload)}")
    seq = payload["seq"]
    if not (isinstance(seq, list) and len(seq) == 2 and all(map(is_uint, seq)) and seq[0] <= seq[1]):
        raise Rejected(f"bad payload seq {seq!r}")
    records = payload["records"]
    if not isinstance(records, list) or [r.get("seq") for r in records] != list(range(seq[0], seq[1] + 1)):
        raise Rejected("records are not exactly seq[0] ..= seq[1]")
    for r in records:
        if not {"seq", "ts", "fields"} <= set(r) <= {"seq", "ts", "fields", "encrypted"}:
            raise Rejected(f"record members {sorted(r)}")
        pos = r.get("encrypted", [])
        if "encrypted" in r and (not isinstance(pos, list) or not all(map(is_uint, pos))
                                 or any(a >= b for a, b in zip(pos, pos[1:]))):
            raise Rejected(f"record {r['seq']}: encrypted is not strictly increasing positions")
    # 5. The JWE.
    hidden = [{} for _ in records]
    if "jwe" in payload:
        hidden = open_jwe(payload, recipient_key)
    elif any("encrypted" in r for r in records):
        raise Rejected("records have encrypted positions but there is no jwe")
    out = []
    for rec, enc in zip(records, hidden):
        pos = rec.get("encrypted", [])
        if len(enc) != len(pos):
            raise Rejected(f"record {rec['seq']}: {len(enc)} decrypted fields for {len(pos)} positions")
        total = len(rec["fields"]) + len(enc)
        if pos and pos[-1] >= total:
            raise Rejected(f"record {rec['seq']}: position {pos[-1]} past the last column")
        clear, secret = iter(rec["fields"].items()), iter(enc.items())
        fields = dict(next(secret) if i in pos else next(clear) for i in range(total))
        if len(fields) != total:
            raise Rejected(f"record {rec['seq']}: a field name appears twice")
        out.append({"gateway": payload["gateway"], "sensor": payload["sensor"],
                    "seq": rec["seq"], "ts": rec["ts"], "fields": fields})
    return out


def open_jwe(payload, recipient_key):
    obj = payload["jwe"]
    exact_members(obj, ["protected", "encrypted_key", "iv", "ciphertext", "tag"], "the JWE")
    header = json.loads(b64u_decode(obj["protected"], "JWE protected"))
    for name in ("encrypted_key", "iv", "ciphertext", "tag"):
        b64u_decode(obj[name], f"JWE {name}")
    exact_members(header, ["alg", "enc", "kid", "epk", "gateway", "sensor", "epoch", "seq"], "the JWE header")
    if header["alg"] != JWE_ALG or header["enc"] != JWE_ENC:
        raise Rejected(f"JWE alg/enc not {JWE_ALG}/{JWE_ENC}")
    for name in ("gateway", "sensor", "epoch", "seq"):
        if header[name] != payload[name]:
            raise Rejected(f"JWE {name} {header[name]!r} is not the payload's {payload[name]!r}")
    if header["kid"] != recipient_key.thumbprint():
        raise Rejected(f"JWE for another recipient (kid {header['kid']})")
    inner = jwe.JWE(algs=[JWE_ALG, JWE_ENC])
    try:
        inner.deserialize(json.dumps(obj))
        inner.decrypt(recipient_key)
    except Exception as e:
        raise Rejected(f"cannot decrypt the JWE: {type(e).__name__}: {e}")
    hidden = json.loads(inner.payload)
    if not isinstance(hidden, list) or len(hidden) != len(payload["records"]) \
            or not all(isinstance(h, dict) for h in hidden):
        raise Rejected("the plaintext is not one object per record")
    return hidden


def cmd_open(args):
    gateway_key = load_key(args.trust)
    recipient_key = load_key(args.recipient_key)
    opened = records = rejected = 0
    for n, line in enumerate(sys.stdin, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            out = open_message(line, gateway_key, recipient_key)
        except (Rejected, ValueError, KeyError, TypeError, AttributeError) as e:
            rejected += 1
            print(f"rejected message at line {n}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        opened += 1
        for rec in out:
            records += 1
            print(compact(rec))
    print(f"opened {opened} messages, {records} records, {rejected} rejected", file=sys.stderr)
    return EX_DATAERR if rejected else 0


# ---------------------------------------------------------------------------
# seal
# ---------------------------------------------------------------------------


def seal_batch(batch, signing_key, recipient_pub, epoch, encrypt):
    gateway, sensor = batch[0]["gateway"], batch[0]["sensor"]
    seq = [batch[0]["seq"], batch[-1]["seq"]]
    records, hidden = [], []
    for r in batch:
        clear, secret, positions = {}, {}, []
        for i, (name, value) in enumerate(r["fields"].items()):
            if name in encrypt:
                secret[name] = value
                positions.append(i)
            else:
                clear[name] = value
        rec = {"seq": r["seq"], "ts": r["ts"], "fields": clear}
        if positions:
            rec["encrypted"] = positions
        records.append(rec)
        hidden.append(secret)
    payload = {"v": 1, "gateway": gateway, "sensor": sensor, "epoch": epoch,
               "seq": seq, "records": records}
    if any(hidden):
        payload["jwe"] = seal_jwe(compact(hidden).encode("utf-8"), recipient_pub,
                                  {"gateway": gateway, "sensor": sensor, "epoch": epoch, "seq": seq})
    signed = jws.JWS(compact(payload).encode("utf-8"))
    signed.add_signature(signing_key, alg="ES256", protected=compact(
        {"alg": "ES256", "kid": signing_key.thumbprint(), "typ": JWS_TYP}))
    # One signature: jwcrypto writes the flattened serialization.
    return compact(json.loads(signed.serialize()))


def seal_jwe(plaintext, recipient_pub, binding):
    """ECDH-ES+A256KW / A256GCM with `epk` in the protected header.

    jwcrypto's high-level JWE.add_recipient() puts the generated `epk` in
    the per-recipient *unprotected* `header` member, which FORMAT.md does not
    allow (no `header` member; `epk` is in the protected header). So this
    uses jwcrypto's algorithm objects (RFC 7518) directly, in the order of
    FORMAT.md "Algorithms, step by step".
    """
    kw = jwa.JWA.keymgmt_alg(JWE_ALG)
    enc = jwa.JWA.encryption_alg(JWE_ENC)
    # Steps 1-4: ephemeral key, ECDH, Concat KDF, random CEK wrapped under the KEK.
    wrapped = kw.wrap(recipient_pub, enc.wrap_key_size, None, {"alg": JWE_ALG, "enc": JWE_ENC})
    epk = wrapped["header"]["epk"]
    header = {"alg": JWE_ALG, "enc": JWE_ENC, "kid": recipient_pub.thumbprint(),
              "epk": {"kty": "EC", "crv": "P-256", "x": epk["x"], "y": epk["y"]}, **binding}
    protected = b64u_encode(compact(header).encode("utf-8"))
    # Steps 5-6: random iv, AES-256-GCM with AAD = ASCII(protected).
    iv, ciphertext, tag = enc.encrypt(wrapped["cek"], protected.encode("ascii"), plaintext)
    return {"protected": protected, "encrypted_key": b64u_encode(wrapped["ek"]),
            "iv": b64u_encode(iv), "ciphertext": b64u_encode(ciphertext), "tag": b64u_encode(tag)}


def cmd_seal(args):
    signing_key = load_key(args.signing_key)
    recipient_pub = load_key(args.recipient_pub)
    encrypt = set(filter(None, args.encrypt.split(",")))
    batch = []

    def flush():
        if batch:
            print(seal_batch(batch, signing_key, recipient_pub, args.epoch, encrypt))
            batch.clear()

    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        if batch and ((r["gateway"], r["sensor"]) != (batch[0]["gateway"], batch[0]["sensor"])
                      or r["seq"] != batch[-1]["seq"] + 1 or len(batch) >= args.batch):
            flush()
        batch.append(r)
    flush()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("open", help="verify and decrypt sealed messages from stdin")
    o.add_argument("--trust", required=True, help="the gateway's public key (SPKI PEM)")
    o.add_argument("--recipient-key", required=True, help="the recipient's private key (PKCS#8 PEM)")
    s = sub.add_parser("seal", help="seal records from stdin")
    s.add_argument("--signing-key", required=True, help="the gateway's private key (PKCS#8 PEM)")
    s.add_argument("--recipient-pub", required=True, help="the recipient's public key (SPKI PEM)")
    s.add_argument("--epoch", required=True)
    s.add_argument("--encrypt", default="", help="comma-separated field names to encrypt")
    s.add_argument("--batch", type=int, default=10, help="most records per message")
    args = parser.parse_args()
    return cmd_open(args) if args.command == "open" else cmd_seal(args)


if __name__ == "__main__":
    sys.exit(main())
