#!/usr/bin/env node
// An independent consumer of sensorgate sealed messages, version 2, in
// JavaScript.
//
// Written from docs/FORMAT.md alone on the stock npm COSE library
// @ldclabs/cose-ts (pinned in package.json and package-lock.json) and its
// CBOR decoder cborg, so the interop test (tests/interop_v2.rs) proves that
// the document is enough in a second language.
//
//   node cose_interop.mjs open MESSAGES GATEWAY.pub RECIPIENT.key > records
//
// MESSAGES is a file (`-`: standard input) holding a CBOR sequence of sealed
// messages (RFC 8742). Verifies and decrypts each and prints one JSON object
// per record, as `sensorgate open` does. At the first message that fails a
// check it prints `rejected message N: REASON` on stderr and exits with 65;
// a gap notice (no records) prints a `declared: ...` line on stderr;
// records of the messages before it have been printed.
//
// What cose-ts 1.5.0 does here: COSE_Sign1 verification (Sign1Message,
// ES256 with ECDSAKey), and for the COSE_Encrypt the primitives: ECDH
// (ECDHKey), HKDF-SHA-256 (hkdf256), the COSE_KDF_Context (KDFContext) and
// AES-256-GCM (AesGcmKey). Version 1.5.0, the newest on the npm registry,
// has no COSE_Encrypt message class and no AES key wrap, so the structure is
// read here (with cborg, which cose-ts uses) and the CEK is unwrapped with
// @noble/ciphers' aeskw (RFC 3394), which cose-ts depends on too.
//
// Nothing here depends on the order of members in a CBOR map: maps are
// decoded into Maps and their keys checked as sets. Duplicate and gap
// tracking is left out: this is about the format.

import { readFileSync } from 'node:fs'
import { createHash, createPrivateKey, createPublicKey, webcrypto } from 'node:crypto'
import { register } from 'node:module'

// cose-ts's AES-GCM runs on WebCrypto (globalThis.crypto), a global only
// from Node 19 on; Node 18 (Debian 12's) has it in node:crypto. Set before
// the libraries load.
if (globalThis.crypto === undefined) {
  globalThis.crypto = webcrypto
}
// cose-ts 1.5.0's modules import each other without `.js`: see extensionless.mjs.
register('./extensionless.mjs', import.meta.url)
const { decodeFirst, Tokenizer, Type } = await import('cborg')
const { Sign1Message } = await import('@ldclabs/cose-ts/sign1')
const { ECDSAKey } = await import('@ldclabs/cose-ts/ecdsa')
const { ECDHKey } = await import('@ldclabs/cose-ts/ecdh')
const { hkdf256 } = await import('@ldclabs/cose-ts/hkdf')
const { KDFContext, PartyInfo, SuppPubInfo } = await import('@ldclabs/cose-ts/kdfcontext')
const { Header } = await import('@ldclabs/cose-ts/header')
const { AesGcmKey } = await import('@ldclabs/cose-ts/aesgcm')
const { encodeCBOR } = await import('@ldclabs/cose-ts/utils')
const iana = await import('@ldclabs/cose-ts/iana')
const { aeskw } = await import('@noble/ciphers/aes')

const EX_DATAERR = 65
const FORMAT_VERSION = 2
const TYP = 'application/sensorgate+cbor'
// COSE header labels (RFC 9052 §3.1, RFC 9596).
const H_ALG = iana.HeaderParameterAlg // 1
const H_KID = iana.HeaderParameterKid // 4
const H_IV = iana.HeaderParameterIV // 5
const H_TYP = 16
const H_EPK = -1
const MAX_RECORDS = 2n ** 32n - 1n
const MAX_MESSAGE = 16 * 1024 * 1024
const U64_MAX = 2n ** 64n - 1n
const I64_MIN = -(2n ** 63n)

class Rejected extends Error {}

const fail = (reason) => {
  throw new Rejected(reason)
}

// ---------------------------------------------------------------------------
// CBOR
// ---------------------------------------------------------------------------

// A float cell, kept apart from an integer: cborg decodes both to a Number,
// and 2.0 is not 2 in a sealed message.
class CborFloat {
  constructor(value) {
    this.value = value
  }
}

class Tagged {
  constructor(tag, value) {
    this.tag = tag
    this.value = value
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

// cborg's tokenizer, marking floats and refusing text that is not UTF-8
// (cborg would put U+FFFD in its place).
class StrictTokenizer extends Tokenizer {
  next() {
    const token = super.next()
    if (Type.equals(token.type, Type.float)) {
      token.value = new CborFloat(token.value)
    } else if (Type.equals(token.type, Type.string) && token.byteValue !== undefined) {
      try {
        utf8.decode(token.byteValue)
      } catch {
        fail('CBOR text that is not UTF-8')
      }
    }
    return token
  }
}

const tags = []
tags[18] = (value) => new Tagged(18, value)
tags[96] = (value) => new Tagged(96, value)

function cborOptions(data) {
  // The tokenizer gets these options as they are: cborg's defaults too.
  const options = {
    strict: false,
    allowIndefinite: true,
    allowUndefined: true,
    allowBigInt: true,
    useMaps: true,
    rejectDuplicateMapKeys: true,
    retainStringBytes: true,
    tags,
  }
  options.tokenizer = new StrictTokenizer(data, options)
  return options
}

// The first CBOR item of `data` and the bytes after it.
function cborFirst(data, what) {
  try {
    return decodeFirst(data, cborOptions(data))
  } catch (e) {
    if (e instanceof Rejected) throw e
    fail(`${what} is not CBOR: ${e.message}`)
  }
}

// Exactly one CBOR item.
function cborDecode(data, what) {
  if (!(data instanceof Uint8Array)) fail(`${what} is not a byte string`)
  const [value, rest] = cborFirst(data, what)
  if (rest.length !== 0) fail(`${what}: bytes after the end of the CBOR item`)
  return value
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

const isInt = (v) => typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v))
const isUint64 = (v) => isInt(v) && BigInt(v) >= 0n && BigInt(v) <= U64_MAX
const isBytes = (v, n) => v instanceof Uint8Array && (n === undefined || v.length === n)
const isMap = (v) => v instanceof Map
const intIs = (v, want) => isInt(v) && BigInt(v) === BigInt(want)

function equalBytes(a, b) {
  return isBytes(a) && isBytes(b) && a.length === b.length && a.every((x, i) => x === b[i])
}

function show(v) {
  if (v instanceof Uint8Array) return `h'${Buffer.from(v).toString('hex')}'`
  if (v instanceof CborFloat) return `${v.value} (a float)`
  if (v instanceof Map) return `{${[...v].map(([k, x]) => `${show(k)}: ${show(x)}`).join(', ')}}`
  if (Array.isArray(v)) return `[${v.map(show).join(', ')}]`
  if (typeof v === 'string') return JSON.stringify(v)
  return String(v)
}

function exactKeys(map, keys, what) {
  const ok =
    isMap(map) && map.size === keys.length && keys.every((k) => map.has(k))
  if (!ok) {
    const got = isMap(map) ? [...map.keys()].map(show).join(', ') : typeof map
    fail(`${what} must have exactly the keys ${keys.map(show).join(', ')}, has ${got}`)
  }
}

// A finite float as Rust's serde_json writes it: the shortest digits that
// read back, `2.0`, `15.37`, `0.00001`, `1e-6`, `1.5e+300` (serde_json
// 1.0.154, with zmij; ryu, before it, wrote `1.5e300`); null otherwise.
function rustFloat(x) {
  if (!Number.isFinite(x)) return 'null'
  const sign = x < 0 || Object.is(x, -0) ? '-' : ''
  if (x === 0) return `${sign}0.0`
  // toExponential() without digits: as many as needed to tell x apart.
  const [mantissa, exp] = Math.abs(x).toExponential().split('e')
  let digits = mantissa.replace('.', '')
  let k = Number(exp) - (digits.length - 1)
  while (digits.endsWith('0')) {
    digits = digits.slice(0, -1)
    k += 1
  }
  const length = digits.length
  const kk = length + k // 10^(kk-1) <= |x| < 10^kk
  if (k >= 0 && kk <= 16) return `${sign}${digits}${'0'.repeat(k)}.0`
  if (kk > 0 && kk <= 16) return `${sign}${digits.slice(0, kk)}.${digits.slice(kk)}`
  if (kk > -5 && kk <= 0) return `${sign}0.${'0'.repeat(-kk)}${digits}`
  const exponent = kk <= 0 ? `e${kk - 1}` : `e+${kk - 1}`
  if (length === 1) return `${sign}${digits}${exponent}`
  return `${sign}${digits[0]}.${digits.slice(1)}${exponent}`
}

// A field value as `sensorgate open` prints it (serde_json). JSON.stringify
// escapes strings as serde_json does: " \ and U+0000..U+001F only.
function jsonValue(v) {
  if (v === null || v === true || v === false) return String(v)
  if (typeof v === 'bigint') return v.toString()
  if (typeof v === 'number') return Number.isInteger(v) ? v.toFixed(0) : fail(`bad integer ${v}`)
  if (v instanceof CborFloat) return rustFloat(v.value)
  if (typeof v === 'string') return JSON.stringify(v)
  throw new Error(`no JSON for ${show(v)}`)
}

function recordLine(gateway, sensor, seq, ts, fields, synced = true) {
  const inner = fields.map(([name, value]) => `${jsonValue(name)}:${jsonValue(value)}`).join(',')
  return (
    `{"gateway":${jsonValue(gateway)},"sensor":${jsonValue(sensor)},` +
    `"seq":${seq.toString()},"ts":"${ts}",${synced ? '' : '"ts_synced":false,'}"fields":{${inner}}}`
  )
}

// RFC 3339 UTC with nine fraction digits, as `sensorgate open` prints.
const LAST_SECOND = 253402300799n // 9999-12-31T23:59:59Z
function formatTs(units, tu) {
  const scale = 10n ** BigInt(tu)
  if (units < 0n) fail(`a timestamp before 1970 (${units} units of 1e-${tu} s)`)
  const secs = units / scale
  if (secs > LAST_SECOND) fail(`a timestamp after 9999 (${units} units of 1e-${tu} s)`)
  const nanos = (units % scale) * 10n ** BigInt(9 - tu)
  const day = new Date(Number(secs) * 1000).toISOString().slice(0, 19)
  return `${day}.${nanos.toString().padStart(9, '0')}Z`
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

function b64uDecode(text) {
  return new Uint8Array(Buffer.from(text, 'base64url'))
}

// The JWK of a P-256 PEM key, and its RFC 7638 thumbprint (32 bytes).
function loadJwk(path, isPrivate) {
  const pem = readFileSync(path, 'utf8')
  const key = isPrivate ? createPrivateKey(pem) : createPublicKey(pem)
  const jwk = key.export({ format: 'jwk' })
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256') {
    throw new Error(`${path}: not a NIST P-256 key`)
  }
  const kid = createHash('sha256')
    .update(`{"crv":"P-256","kty":"EC","x":"${jwk.x}","y":"${jwk.y}"}`, 'utf8')
    .digest()
  return { jwk, kid: new Uint8Array(kid) }
}

function gatewayKey(path) {
  const { jwk, kid } = loadJwk(path, false)
  const point = new Uint8Array([0x04, ...b64uDecode(jwk.x), ...b64uDecode(jwk.y)])
  return { key: ECDSAKey.fromPublic(point), kid }
}

function recipientKey(path) {
  const { jwk, kid } = loadJwk(path, true)
  return { key: ECDHKey.fromSecret(iana.EllipticCurveP_256, b64uDecode(jwk.d)), kid }
}

// ---------------------------------------------------------------------------
// open
// ---------------------------------------------------------------------------

const ABSENT = Symbol('undefined cell')

// [name, values] of a column: ABSENT for an `undefined` cell, the field's
// value otherwise (null: a non-finite float).
function checkColumn(col, n, what) {
  if (!Array.isArray(col) || (col.length !== 2 && col.length !== 3)) {
    fail(`${what} is not an array of 2 or 3`)
  }
  const [name, cells] = col
  if (typeof name !== 'string') fail(`${what}: the name is not text`)
  if (!Array.isArray(cells) || BigInt(cells.length) !== n) {
    fail(`column ${JSON.stringify(name)}: not an array of ${n} cells`)
  }
  if (col.length === 3) {
    const e = col[2]
    if (!isInt(e) || BigInt(e) < -22n || BigInt(e) > 0n) {
      fail(`column ${JSON.stringify(name)}: decimal exponent ${show(e)} not an integer in -22..=0`)
    }
    // m / 10^-e, both exact doubles: one rounding, as FORMAT.md says.
    const divisor = Number(`1e${-Number(e)}`)
    return [
      name,
      cells.map((m) => {
        if (m === undefined) return ABSENT
        if (typeof m !== 'number' || !Number.isSafeInteger(m)) {
          fail(`column ${JSON.stringify(name)}: decimal cell ${show(m)} is not an integer below 2^53`)
        }
        return new CborFloat(m / divisor)
      }),
    ]
  }
  return [
    name,
    cells.map((cell) => {
      if (cell === undefined) return ABSENT
      if (isInt(cell)) {
        // The gateway writes 64-bit signed integers; `sensorgate open`
        // takes any 64-bit integer (unsigned up to 2^64 - 1).
        if (BigInt(cell) < I64_MIN || BigInt(cell) > U64_MAX) {
          fail(`column ${JSON.stringify(name)}: integer ${cell} is outside -2^63 ..= 2^64 - 1`)
        }
        return cell
      }
      if (cell instanceof CborFloat || typeof cell === 'string' || typeof cell === 'boolean' || cell === null) {
        return cell
      }
      fail(`column ${JSON.stringify(name)}: a cell ${show(cell)}`)
    }),
  ]
}

async function openMessage(raw, gateway, recipient) {
  // 1. A tag 18 around [protected bstr, {}, payload bstr, 64-byte signature].
  const outer = cborDecode(raw, 'the message')
  if (!(outer instanceof Tagged) || outer.tag !== 18 || raw[0] !== 0xd2) {
    fail('not a COSE_Sign1 (CBOR tag 18)')
  }
  const body = outer.value
  if (!Array.isArray(body) || body.length !== 4) fail('the COSE_Sign1 is not an array of four')
  const [protectedBytes, unprotected, payloadBytes, signature] = body
  if (!isBytes(protectedBytes) || !isBytes(payloadBytes)) {
    fail('the protected header or payload is not a byte string')
  }
  if (!isMap(unprotected) || unprotected.size !== 0) {
    fail(`the unprotected header is not an empty map: ${show(unprotected)}`)
  }
  if (!isBytes(signature, 64)) fail('the signature is not 64 bytes')
  // 2. Exactly alg ES256, typ and a trusted kid.
  const header = cborDecode(protectedBytes, 'the protected header')
  exactKeys(header, [H_ALG, H_KID, H_TYP], 'the protected header')
  if (!intIs(header.get(H_ALG), iana.AlgorithmES256)) {
    fail(`alg ${show(header.get(H_ALG))} is not ES256 (-7)`)
  }
  if (header.get(H_TYP) !== TYP) fail(`typ ${show(header.get(H_TYP))} is not ${JSON.stringify(TYP)}`)
  if (!equalBytes(header.get(H_KID), gateway.kid)) {
    fail(`kid ${show(header.get(H_KID))} is not a trusted gateway key`)
  }
  // 3. The signature, by cose-ts, before anything in the payload is looked at.
  let verified
  try {
    verified = Sign1Message.fromBytes(gateway.key, raw)
  } catch (e) {
    fail(`bad signature: ${e.message}`)
  }
  // 4. The payload: a gap notice (it has a `notice`) or a batch.
  const payload = cborDecode(verified.payload, 'the payload')
  if (isMap(payload) && payload.has('notice')) {
    return { lines: [], notice: checkNotice(payload) }
  }
  const base = ['v', 'gateway', 'sensor', 'epoch', 'seq', 'tu', 't', 'cols']
  const withEnc = isMap(payload) && (payload.has('enc') || payload.has('ep'))
  const withClock = isMap(payload) && payload.has('clock')
  exactKeys(
    payload,
    [...base, ...(withEnc ? ['ep', 'enc'] : []), ...(withClock ? ['clock'] : [])],
    'the payload'
  )
  const get = (k) => payload.get(k)
  if (!intIs(get('v'), FORMAT_VERSION)) fail(`v ${show(get('v'))} is not ${FORMAT_VERSION}`)
  for (const name of ['gateway', 'sensor', 'epoch']) {
    if (typeof get(name) !== 'string') fail(`${name} is not text`)
  }
  const [first, last] = checkSeq(get('seq'))
  const n = last - first + 1n
  if (n > MAX_RECORDS) fail(`${n} records in one batch`)
  const tu = get('tu')
  if (!isInt(tu) || ![0, 3, 6, 9].includes(Number(tu))) fail(`tu ${show(tu)} is not 0, 3, 6 or 9`)
  const t = get('t')
  if (!Array.isArray(t) || BigInt(t.length) !== n || !t.every(isInt)) {
    fail(`t is not an array of ${n} integers`)
  }
  if (!Array.isArray(get('cols'))) fail('cols is not an array')
  // The clock (FORMAT.md, Time): [synced, boot id, boot clock ms].
  let synced = true
  if (withClock) {
    const clock = get('clock')
    if (
      !Array.isArray(clock) ||
      clock.length !== 3 ||
      typeof clock[0] !== 'boolean' ||
      !(clock[1] instanceof Uint8Array) ||
      clock[1].length !== 16 ||
      !isUint64(clock[2])
    ) {
      fail(`clock ${show(clock)} is not [synced, 16-byte boot id, ms]`)
    }
    synced = clock[0]
  }
  const clear = get('cols').map((c, i) => checkColumn(c, n, `clear column ${i}`))
  // 5. The COSE_Encrypt.
  let hidden = []
  let ep = []
  if (withEnc) {
    ep = get('ep')
    if (
      !Array.isArray(ep) ||
      ep.length === 0 ||
      !ep.every(isUint64) ||
      !ep.every((p, i) => i === 0 || BigInt(ep[i - 1]) < BigInt(p))
    ) {
      fail(`ep ${show(ep)} is not a non-empty strictly increasing array of positions`)
    }
    ep = ep.map(Number)
    const aad = encodeCBOR([get('gateway'), get('sensor'), get('epoch'), first, last])
    const plaintext = await openEnc(get('enc'), aad, recipient)
    const columns = cborDecode(plaintext, 'the plaintext')
    if (!Array.isArray(columns) || columns.length !== ep.length) {
      fail(`the plaintext is not an array of ${ep.length} columns`)
    }
    hidden = columns.map((c, i) => checkColumn(c, n, `encrypted column ${i}`))
  }
  const total = clear.length + hidden.length
  if (ep.length > 0 && ep[ep.length - 1] >= total) {
    fail(`ep position ${ep[ep.length - 1]} is past the last of ${total} columns`)
  }
  // The record's column order: clear and encrypted columns merged by ep.
  const positions = new Set(ep)
  let c = 0
  let h = 0
  const order = []
  for (let i = 0; i < total; i++) {
    order.push(positions.has(i) ? hidden[h++] : clear[c++])
  }
  if (new Set(order.map(([name]) => name)).size !== order.length) fail('a column name appears twice')
  // Records.
  const lines = []
  let units = 0n
  for (let i = 0; i < Number(n); i++) {
    units += BigInt(t[i])
    const ts = formatTs(units, Number(tu))
    const fields = order
      .filter(([, values]) => values[i] !== ABSENT)
      .map(([name, values]) => [name, values[i]])
    lines.push(recordLine(get('gateway'), get('sensor'), first + BigInt(i), ts, fields, synced))
  }
  return { lines, notice: null }
}

// [first, last] as BigInts: sequence numbers are unsigned 64-bit.
function checkSeq(seq) {
  if (!(Array.isArray(seq) && seq.length === 2 && seq.every(isUint64) && BigInt(seq[0]) <= BigInt(seq[1]))) {
    fail(`seq ${show(seq)} is not [first, last] with first <= last`)
  }
  return [BigInt(seq[0]), BigInt(seq[1])]
}

// The stderr line for a gap notice (FORMAT.md, Gap notices).
function checkNotice(payload) {
  const keys = ['v', 'gateway', 'sensor', 'epoch', 'seq', 'notice', 'cause', 'lost', 'exact']
  exactKeys(payload, keys, 'the gap notice')
  const get = (k) => payload.get(k)
  if (!intIs(get('v'), FORMAT_VERSION)) fail(`v ${show(get('v'))} is not ${FORMAT_VERSION}`)
  for (const name of ['gateway', 'sensor', 'epoch', 'cause']) {
    if (typeof get(name) !== 'string') fail(`${name} is not text`)
  }
  if (get('notice') !== 'gap') fail(`notice ${show(get('notice'))} is not "gap"`)
  const [first, last] = checkSeq(get('seq'))
  const n = last - first + 1n
  const lost = get('lost')
  const exact = get('exact')
  if (!isUint64(lost) || BigInt(lost) > n) fail(`lost ${show(lost)} is not an unsigned integer up to ${n}`)
  if (typeof exact !== 'boolean' || (exact && BigInt(lost) !== n)) {
    fail(`exact ${show(exact)} with lost ${lost} of ${n}`)
  }
  const what = exact ? `${lost} records lost` : `at most ${lost} records lost`
  const tail = exact ? '' : ', the other numbers never used'
  return (
    `declared: ${get('gateway')}/${get('sensor')} epoch ${get('epoch')}: ` +
    `seq ${first}..${last} will not arrive: ${what} (${get('cause')})${tail}`
  )
}

// The recipient's protected header as its bytes on the wire: the
// COSE_KDF_Context takes those bytes (RFC 9053 §5.3), where cose-ts's
// SuppPubInfo would re-encode a decoded Header.
class WireHeader extends Header {
  constructor(bytes) {
    super(Header.fromBytes(bytes).toRaw())
    this.bytes = bytes
  }

  toBytes() {
    return this.bytes
  }
}

async function openEnc(enc, aad, recipient) {
  if (!isBytes(enc)) fail('enc is not a byte string')
  const outer = cborDecode(enc, 'enc')
  if (!(outer instanceof Tagged) || outer.tag !== 96) fail('enc is not a COSE_Encrypt (CBOR tag 96)')
  const body = outer.value
  if (!Array.isArray(body) || body.length !== 4) fail('the COSE_Encrypt is not an array of four')
  const [protectedBytes, unprotected, ciphertext, recipients] = body
  const header = cborDecode(protectedBytes, 'the COSE_Encrypt protected header')
  exactKeys(header, [H_ALG], 'the COSE_Encrypt protected header')
  if (!intIs(header.get(H_ALG), iana.AlgorithmA256GCM)) fail('the COSE_Encrypt alg is not A256GCM (3)')
  exactKeys(unprotected, [H_IV], 'the COSE_Encrypt unprotected header')
  const iv = unprotected.get(H_IV)
  if (!isBytes(iv, 12)) fail('the iv is not 12 bytes')
  if (!isBytes(ciphertext) || ciphertext.length < 16) {
    fail('the ciphertext is not a byte string of at least 16 bytes')
  }
  if (!Array.isArray(recipients) || recipients.length !== 1) {
    fail('the COSE_Encrypt has not exactly one recipient')
  }
  const r = recipients[0]
  if (!Array.isArray(r) || r.length !== 3) fail('the recipient is not an array of three')
  const [rProtected, rUnprotected, wrapped] = r
  const rHeader = cborDecode(rProtected, 'the recipient protected header')
  exactKeys(rHeader, [H_ALG], 'the recipient protected header')
  if (!intIs(rHeader.get(H_ALG), iana.AlgorithmECDH_ES_A256KW)) {
    fail('the recipient alg is not ECDH-ES + A256KW (-31)')
  }
  exactKeys(rUnprotected, [H_EPK, H_KID], 'the recipient unprotected header')
  const epk = rUnprotected.get(H_EPK)
  exactKeys(epk, [1, -1, -2, -3], 'the ephemeral key')
  if (!intIs(epk.get(1), iana.KeyTypeEC2) || !intIs(epk.get(-1), iana.EllipticCurveP_256)) {
    fail('the ephemeral key is not EC2 (1: 2) on P-256 (-1: 1)')
  }
  if (!isBytes(epk.get(-2), 32) || !isBytes(epk.get(-3), 32)) {
    fail("the ephemeral key's x and y are not 32 bytes each")
  }
  if (!equalBytes(rUnprotected.get(H_KID), recipient.kid)) {
    fail(`encrypted for another recipient (kid ${show(rUnprotected.get(H_KID))})`)
  }
  if (!isBytes(wrapped, 40)) fail('the wrapped key is not 40 bytes')
  // ECDH-ES + A256KW (RFC 9053 §6.3.1): Z, then the KEK by HKDF-SHA-256
  // over the COSE_KDF_Context for A256KW, then the CEK unwrapped.
  let cek
  try {
    const ephemeral = ECDHKey.fromPublic(
      iana.EllipticCurveP_256,
      new Uint8Array([0x04, ...epk.get(-2), ...epk.get(-3)]),
    )
    const z = recipient.key.ecdh(ephemeral)
    const context = new KDFContext(
      iana.AlgorithmA256KW,
      new PartyInfo(),
      new PartyInfo(),
      new SuppPubInfo(256, new WireHeader(rProtected)),
    )
    const kek = hkdf256(z, undefined, context.toBytes(), 32)
    cek = aeskw(kek).decrypt(wrapped)
  } catch (e) {
    fail(`cannot decrypt: the wrapped key does not unwrap (${e.message || e.name})`)
  }
  // AES-256-GCM over Enc_structure ["Encrypt", protected, external_aad].
  try {
    const encStructure = encodeCBOR(['Encrypt', protectedBytes, aad])
    return await AesGcmKey.fromSecret(cek).decrypt(ciphertext, iv, encStructure)
  } catch (e) {
    fail(`cannot decrypt: the AES-GCM tag does not verify (ciphertext or external AAD changed; ${e.message || e.name})`)
  }
}

async function cmdOpen(messagesPath, gatewayPath, recipientPath) {
  const gateway = gatewayKey(gatewayPath)
  const recipient = recipientKey(recipientPath)
  let data = new Uint8Array(readFileSync(messagesPath === '-' ? 0 : messagesPath))
  let opened = 0
  let records = 0
  const out = []
  for (let number = 1; data.length > 0; number++) {
    let result
    try {
      const [, rest] = cborFirst(data, 'the message')
      const raw = data.subarray(0, data.length - rest.length)
      data = rest
      if (raw.length > MAX_MESSAGE) fail(`${raw.length} bytes, over ${MAX_MESSAGE}`)
      result = await openMessage(raw, gateway, recipient)
    } catch (e) {
      const reason = e instanceof Rejected ? e.message : `${e.name}: ${e.message}`
      await write(process.stdout, out.join(''))
      process.stderr.write(`rejected message ${number}: ${reason}\n`)
      return EX_DATAERR
    }
    opened += 1
    records += result.lines.length
    for (const line of result.lines) out.push(line + '\n')
    if (result.notice) {
      await write(process.stdout, out.splice(0).join(''))
      process.stderr.write(`${result.notice}\n`)
    }
  }
  await write(process.stdout, out.join(''))
  process.stderr.write(`opened ${opened} messages, ${records} records\n`)
  return 0
}

function write(stream, text) {
  return new Promise((resolve, reject) => stream.write(text, (e) => (e ? reject(e) : resolve())))
}

async function main(argv) {
  const usage = 'usage: cose_interop.mjs open MESSAGES GATEWAY.pub RECIPIENT.key'
  if (argv[0] !== 'open' || argv.length !== 4) {
    process.stderr.write(`${usage}\n`)
    return 2
  }
  try {
    return await cmdOpen(argv[1], argv[2], argv[3])
  } catch (e) {
    process.stderr.write(`error: ${e.message}\n`)
    return 1
  }
}

process.exitCode = await main(process.argv.slice(2))
