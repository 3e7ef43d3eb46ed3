//! The payload of format version 2 (`docs/FORMAT.md`, "Level 2"): a CBOR
//! map holding the batch by column, and the COSE_Encrypt of its encrypted
//! columns as a byte string.

use super::cbor::{self, Item, Reader};
use super::columns::{self, Column, Layout};
use super::format::Selection;
use crate::record::Record;

/// The payload's format version.
pub const FORMAT_VERSION_2: u64 = 2;

/// The identity of a batch: who sent it and which records it holds.
pub(crate) struct BatchHeader<'a> {
    pub gateway: &'a str,
    pub sensor: &'a str,
    pub epoch: &'a str,
    pub first: u64,
    pub last: u64,
}

/// The five entries every version 2 payload starts with: `v`, `gateway`,
/// `sensor`, `epoch`, `seq`.
fn write_stream(out: &mut Vec<u8>, header: &BatchHeader<'_>) {
    cbor::text(out, "v");
    cbor::uint(out, FORMAT_VERSION_2);
    cbor::text(out, "gateway");
    cbor::text(out, header.gateway);
    cbor::text(out, "sensor");
    cbor::text(out, header.sensor);
    cbor::text(out, "epoch");
    cbor::text(out, header.epoch);
    cbor::text(out, "seq");
    cbor::array(out, 2);
    cbor::uint(out, header.first);
    cbor::uint(out, header.last);
}

/// What a batch says about the clock that stamped it (`docs/FORMAT.md`,
/// "Time"): `[synced, boot id, boot clock ms at t[0]]`. Unsynchronised
/// batches carry it so that their times can be corrected; a synchronised
/// batch carrying it is an *anchor*, pairing its `t[0]` with the boot
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchClock {
    pub synced: bool,
    pub boot: [u8; 16],
    pub boot_ms: u64,
}

/// Writes the payload map. `enc` is the encrypted columns' positions and
/// the COSE_Encrypt holding them, when the batch has any.
pub(crate) fn write_payload(
    out: &mut Vec<u8>,
    header: &BatchHeader<'_>,
    records: &[Record],
    layout: &Layout<'_>,
    selection: Selection<'_>,
    enc: Option<(&[usize], &[u8])>,
    clock: Option<&BatchClock>,
) {
    let entries = 8 + if enc.is_some() { 2 } else { 0 } + usize::from(clock.is_some());
    cbor::map(out, entries);
    write_stream(out, header);
    columns::write_times(out, records);
    if let Some(clock) = clock {
        cbor::text(out, "clock");
        cbor::array(out, 3);
        cbor::simple(
            out,
            if clock.synced {
                cbor::TRUE
            } else {
                cbor::FALSE
            },
        );
        cbor::bytes(out, &clock.boot);
        cbor::uint(out, clock.boot_ms);
    }
    cbor::text(out, "cols");
    layout.write_columns(out, records, selection, false);
    if let Some((positions, encrypt)) = enc {
        cbor::text(out, "ep");
        cbor::array(out, positions.len());
        for &p in positions {
            cbor::uint(out, p as u64);
        }
        cbor::text(out, "enc");
        cbor::bytes(out, encrypt);
    }
}

/// Why the gateway declares a range of sequence numbers in a gap notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// The last run did not stop cleanly (power cut, crash, `kill -9`):
    /// records read in its last moments may not have reached the spool.
    UncleanStop,
    /// The disk spool was damaged and these records were lost from it.
    SpoolDamage,
    /// The spool was full (`when_full = drop_oldest`): these records were
    /// dropped to make room for newer ones.
    SpoolFull,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::UncleanStop => "unclean-stop",
            GapCause::SpoolDamage => "spool-damage",
            GapCause::SpoolFull => "spool-full",
        }
    }
}

/// A range of one sensor's sequence numbers whose records will never be
/// sent, as the gateway knows it: `lost` of them at most (exactly, when
/// `exact`) were records; the others were never used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice {
    pub sensor: std::sync::Arc<str>,
    pub first: u64,
    pub last: u64,
    pub lost: u64,
    pub exact: bool,
    pub cause: GapCause,
}

/// Writes a gap notice's payload map.
pub(crate) fn write_notice(out: &mut Vec<u8>, header: &BatchHeader<'_>, notice: &GapNotice) {
    cbor::map(out, 9);
    write_stream(out, header);
    cbor::text(out, "notice");
    cbor::text(out, "gap");
    cbor::text(out, "cause");
    cbor::text(out, notice.cause.as_str());
    cbor::text(out, "lost");
    cbor::uint(out, notice.lost);
    cbor::text(out, "exact");
    cbor::simple(
        out,
        if notice.exact {
            cbor::TRUE
        } else {
            cbor::FALSE
        },
    );
}

/// A gap notice as read from a message.
#[derive(Debug)]
pub(crate) struct NoticeIn<'a> {
    pub gateway: &'a str,
    pub sensor: &'a str,
    pub epoch: &'a str,
    pub first: u64,
    pub last: u64,
    pub cause: &'a str,
    pub lost: u64,
    pub exact: bool,
}

/// What a version 2 payload holds.
#[derive(Debug)]
pub(crate) enum PayloadIn<'a> {
    Batch(BatchIn<'a>),
    Notice(NoticeIn<'a>),
}

/// A payload as read from a message, borrowing from it.
#[derive(Debug)]
pub(crate) struct BatchIn<'a> {
    pub gateway: &'a str,
    pub sensor: &'a str,
    pub epoch: &'a str,
    pub first: u64,
    pub last: u64,
    pub tu: u64,
    pub t: Vec<i128>,
    pub cols: Vec<Column<'a>>,
    pub ep: Option<Vec<usize>>,
    pub enc: Option<&'a [u8]>,
    pub clock: Option<BatchClock>,
}

impl BatchIn<'_> {
    /// The number of records (`last - first + 1`).
    pub fn len(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// Why a payload is not a version 2 batch; `Version` when its `v` is
/// another one.
#[derive(Debug)]
pub(crate) enum PayloadError {
    Version(String),
    Bad(String),
}

fn bad(msg: impl Into<String>) -> PayloadError {
    PayloadError::Bad(msg.into())
}

impl From<cbor::CborError> for PayloadError {
    fn from(e: cbor::CborError) -> Self {
        PayloadError::Bad(e.to_string())
    }
}

impl From<columns::ColumnsError> for PayloadError {
    fn from(e: columns::ColumnsError) -> Self {
        PayloadError::Bad(e.to_string())
    }
}

fn uint(r: &mut Reader<'_>, what: &str) -> Result<u64, PayloadError> {
    match r.next()? {
        Item::Uint(n) => Ok(n),
        other => Err(bad(format!(
            "{what} is {}, not an unsigned integer",
            other.kind()
        ))),
    }
}

fn text<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a str, PayloadError> {
    match r.next()? {
        Item::Text(s) => Ok(s),
        other => Err(bad(format!("{what} is {}, not text", other.kind()))),
    }
}

fn array(r: &mut Reader<'_>, what: &str) -> Result<usize, PayloadError> {
    match r.next()? {
        Item::Array(n) => Ok(n),
        other => Err(bad(format!("{what} is {}, not an array", other.kind()))),
    }
}

/// The most records one message may declare: bounds what a signed but
/// absurd `seq` makes the opener allocate.
const MAX_RECORDS: u64 = u32::MAX as u64;

/// Parses and checks the payload: exactly the keys of FORMAT.md for a
/// batch or a gap notice, in any order, each once; `t` and every column
/// with one entry per record.
pub(crate) fn parse_payload(payload: &[u8]) -> Result<PayloadIn<'_>, PayloadError> {
    let mut r = Reader::new(payload);
    let Item::Map(entries) = r.next()? else {
        return Err(bad("the payload is not a CBOR map"));
    };
    let mut v = None;
    let (mut gateway, mut sensor, mut epoch) = (None, None, None);
    let mut seq = None;
    let mut tu = None;
    let mut t: Option<Vec<i128>> = None;
    // Columns are read once `seq` is known (they are checked against it);
    // until then their position is remembered. A map's keys come in any
    // order, so `cols` may precede `seq`: then it is read in a second pass.
    let mut cols_at: Option<usize> = None;
    let mut ep: Option<Vec<usize>> = None;
    let mut enc = None;
    let (mut notice, mut cause, mut lost, mut exact) = (None, None, None, None);
    let mut clock = None;
    let mut seen: Vec<&str> = Vec::with_capacity(entries);
    for _ in 0..entries {
        let key = text(&mut r, "a payload key")?;
        if seen.contains(&key) {
            return Err(bad(format!("payload key {key:?} appears twice")));
        }
        seen.push(key);
        match key {
            "v" => v = Some(r.next()?),
            "gateway" => gateway = Some(text(&mut r, "gateway")?),
            "sensor" => sensor = Some(text(&mut r, "sensor")?),
            "epoch" => epoch = Some(text(&mut r, "epoch")?),
            "seq" => {
                if array(&mut r, "seq")? != 2 {
                    return Err(bad("seq is not [first, last]"));
                }
                seq = Some((uint(&mut r, "seq[0]")?, uint(&mut r, "seq[1]")?));
            }
            "tu" => tu = Some(uint(&mut r, "tu")?),
            "t" => {
                let n = array(&mut r, "t")?;
                let mut times = Vec::with_capacity(n);
                for i in 0..n {
                    times.push(
                        r.next()?
                            .integer()
                            .ok_or_else(|| bad(format!("t[{i}] is not an integer")))?,
                    );
                }
                t = Some(times);
            }
            "cols" => {
                cols_at = Some(r.position());
                skip(&mut r, 0)?;
            }
            "ep" => {
                let n = array(&mut r, "ep")?;
                let mut positions = Vec::with_capacity(n);
                for _ in 0..n {
                    positions.push(
                        usize::try_from(uint(&mut r, "an ep position")?)
                            .map_err(|_| bad("an ep position is too large"))?,
                    );
                }
                enc_positions_ok(&positions)?;
                ep = Some(positions);
            }
            "enc" => match r.next()? {
                Item::Bytes(b) => enc = Some(b),
                other => return Err(bad(format!("enc is {}, not a byte string", other.kind()))),
            },
            "clock" => clock = Some(batch_clock(&mut r)?),
            "notice" => notice = Some(text(&mut r, "notice")?),
            "cause" => cause = Some(text(&mut r, "cause")?),
            "lost" => lost = Some(uint(&mut r, "lost")?),
            "exact" => match r.next()? {
                Item::Simple(cbor::TRUE) => exact = Some(true),
                Item::Simple(cbor::FALSE) => exact = Some(false),
                other => return Err(bad(format!("exact is {}, not a boolean", other.kind()))),
            },
            other => return Err(bad(format!("unknown payload key {other:?}"))),
        }
    }
    r.finish()?;
    match v {
        Some(Item::Uint(FORMAT_VERSION_2)) => {}
        Some(Item::Uint(n)) => return Err(PayloadError::Version(n.to_string())),
        Some(other) => return Err(PayloadError::Version(other.kind().to_string())),
        None => return Err(bad("the payload has no v")),
    }
    let missing = |name: &str| bad(format!("the payload has no {name}"));
    let (first, last) = seq.ok_or_else(|| missing("seq"))?;
    if let Some(kind) = notice {
        if kind != "gap" {
            return Err(bad(format!("notice {kind:?} is not a known notice (gap)")));
        }
        if let Some(key) = ["tu", "t", "cols", "ep", "enc", "clock"]
            .into_iter()
            .find(|k| seen.contains(k))
        {
            return Err(bad(format!("a gap notice has no {key}")));
        }
        if first > last {
            return Err(bad(format!("seq [{first}, {last}] is reversed")));
        }
        let lost = lost.ok_or_else(|| missing("lost"))?;
        let exact = exact.ok_or_else(|| missing("exact"))?;
        let span = last - first + 1;
        if lost > span || (exact && lost != span) {
            return Err(bad(format!(
                "a gap of seq [{first}, {last}] cannot have lost {lost} records{}",
                if exact { " exactly" } else { "" }
            )));
        }
        return Ok(PayloadIn::Notice(NoticeIn {
            gateway: gateway.ok_or_else(|| missing("gateway"))?,
            sensor: sensor.ok_or_else(|| missing("sensor"))?,
            epoch: epoch.ok_or_else(|| missing("epoch"))?,
            first,
            last,
            cause: cause.ok_or_else(|| missing("cause"))?,
            lost,
            exact,
        }));
    }
    if let Some(key) = ["cause", "lost", "exact"]
        .into_iter()
        .find(|k| seen.contains(k))
    {
        return Err(bad(format!("a batch has no {key}")));
    }
    if first > last || last - first >= MAX_RECORDS {
        return Err(bad(format!(
            "seq [{first}, {last}] is not a range of 1 to {MAX_RECORDS} records"
        )));
    }
    let n = (last - first + 1) as usize;
    let t = t.ok_or_else(|| missing("t"))?;
    if t.len() != n {
        return Err(bad(format!("t has {} times for {n} records", t.len())));
    }
    let cols_at = cols_at.ok_or_else(|| missing("cols"))?;
    let mut cr = Reader::new(&payload[cols_at..]);
    let cols = columns::read_columns(&mut cr, n)?;
    if ep.is_some() != enc.is_some() {
        return Err(bad("ep and enc must come together"));
    }
    Ok(PayloadIn::Batch(BatchIn {
        gateway: gateway.ok_or_else(|| missing("gateway"))?,
        sensor: sensor.ok_or_else(|| missing("sensor"))?,
        epoch: epoch.ok_or_else(|| missing("epoch"))?,
        first,
        last,
        tu: tu.ok_or_else(|| missing("tu"))?,
        t,
        cols,
        ep,
        enc,
        clock,
    }))
}

/// `[synced, boot id (16 bytes), boot clock ms]`.
fn batch_clock(r: &mut Reader<'_>) -> Result<BatchClock, PayloadError> {
    if array(r, "clock")? != 3 {
        return Err(bad("clock is not [synced, boot, ms]"));
    }
    let synced = match r.next()? {
        Item::Simple(cbor::TRUE) => true,
        Item::Simple(cbor::FALSE) => false,
        other => return Err(bad(format!("clock[0] is {}, not a boolean", other.kind()))),
    };
    let boot = match r.next()? {
        Item::Bytes(b) => <[u8; 16]>::try_from(b).map_err(|_| {
            bad(format!(
                "clock[1] is {} bytes, not a 16-byte boot id",
                b.len()
            ))
        })?,
        other => {
            return Err(bad(format!(
                "clock[1] is {}, not a byte string",
                other.kind()
            )));
        }
    };
    let boot_ms = uint(r, "clock[2]")?;
    Ok(BatchClock {
        synced,
        boot,
        boot_ms,
    })
}

fn enc_positions_ok(positions: &[usize]) -> Result<(), PayloadError> {
    if positions.is_empty() || positions.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("ep is not a non-empty, strictly increasing list"));
    }
    Ok(())
}

/// Skips one item (and everything inside it).
fn skip(r: &mut Reader<'_>, depth: usize) -> Result<(), PayloadError> {
    if depth > 16 {
        return Err(bad("the payload nests too deep"));
    }
    match r.next()? {
        Item::Array(n) => (0..n).try_for_each(|_| skip(r, depth + 1)),
        Item::Map(n) => (0..2 * n).try_for_each(|_| skip(r, depth + 1)),
        Item::Tag(_) => skip(r, depth + 1),
        _ => Ok(()),
    }
}

/// The decrypted columns: an array of `n`-cell columns, as many as
/// `positions`.
pub(crate) fn parse_encrypted_columns<'a>(
    plaintext: &'a [u8],
    n: usize,
    positions: &[usize],
) -> Result<Vec<Column<'a>>, String> {
    let mut r = Reader::new(plaintext);
    let cols = columns::read_columns(&mut r, n).map_err(|e| e.to_string())?;
    r.finish().map_err(|e| e.to_string())?;
    if cols.len() != positions.len() {
        return Err(format!(
            "{} encrypted columns but ep lists {} positions",
            cols.len(),
            positions.len()
        ));
    }
    Ok(cols)
}

/// Merges clear and encrypted columns into the record's column order: at
/// each position in `positions` the next encrypted column, elsewhere the
/// next clear one. Names must be unique across both.
pub(crate) fn merge_columns<'c, 'a>(
    clear: &'c [Column<'a>],
    encrypted: &'c [Column<'a>],
    positions: &[usize],
) -> Result<Vec<&'c Column<'a>>, String> {
    let total = clear.len() + encrypted.len();
    if positions.last().is_some_and(|&p| p >= total) {
        return Err(format!(
            "encrypted positions {positions:?} are not column indexes below {total}"
        ));
    }
    let mut merged: Vec<&Column<'a>> = Vec::with_capacity(total);
    let (mut c, mut e) = (clear.iter(), encrypted.iter());
    let mut at = positions.iter().peekable();
    for i in 0..total {
        let column = if at.peek() == Some(&&i) {
            at.next();
            e.next()
        } else {
            c.next()
        }
        .expect("counts checked");
        if merged.iter().any(|m| m.name == column.name) {
            return Err(format!(
                "column {:?} is both clear and encrypted",
                column.name
            ));
        }
        merged.push(column);
    }
    Ok(merged)
}
