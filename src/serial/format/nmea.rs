//! `nmea` format: NMEA 0183 GGA, RMC and VTG sentences into named, typed
//! fields (position as signed decimal degrees, RMC's date and time as one
//! RFC 3339 `utc` field usable as `time_field`).
//!
//! Other sentence types, and proprietary (`$P...`) sentences, are skipped,
//! not rejected: a GPS receiver sends many kinds and they are not faults.
//! An empty NMEA field (no fix yet) leaves its record field out.

use std::sync::Arc;

use super::typed::{control_char, not_text};
use super::{Decode, DecodeError, Decoded, Reject};
use crate::record::{Field, Value};
use crate::serial::framing::nmea::verify;

/// Field names, built once per decoder and shared by its records.
#[derive(Debug)]
struct Names {
    sentence: Arc<str>,
    talker: Arc<str>,
    time: Arc<str>,
    lat: Arc<str>,
    lon: Arc<str>,
    fix_quality: Arc<str>,
    satellites: Arc<str>,
    hdop: Arc<str>,
    altitude_m: Arc<str>,
    geoid_separation_m: Arc<str>,
    valid: Arc<str>,
    speed_knots: Arc<str>,
    course_deg: Arc<str>,
    date: Arc<str>,
    utc: Arc<str>,
    magnetic_variation_deg: Arc<str>,
    mode: Arc<str>,
    course_true_deg: Arc<str>,
    course_magnetic_deg: Arc<str>,
    speed_kmh: Arc<str>,
}

/// Decodes NMEA 0183 sentences (`$GPGGA,...*hh`, a trailing `\r\n` allowed).
#[derive(Debug, Clone)]
pub struct NmeaDecoder {
    names: Arc<Names>,
}

impl Default for NmeaDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Fields after the address that are kept; the decoded sentences use at
/// most 12, later ones are only counted.
const KEPT: usize = 16;

/// The comma-separated fields of a sentence after its address.
struct Parts<'a> {
    sentence: &'static str,
    fields: [&'a str; KEPT],
    count: usize,
}

impl<'a> Parts<'a> {
    fn new(sentence: &'static str, split: std::str::Split<'a, char>) -> Self {
        let mut parts = Parts {
            sentence,
            fields: [""; KEPT],
            count: 0,
        };
        for field in split {
            if let Some(slot) = parts.fields.get_mut(parts.count) {
                *slot = field;
            }
            parts.count += 1;
        }
        parts
    }

    /// Field `i` (1-based, as NMEA references number them).
    fn get(&self, i: usize) -> &'a str {
        self.fields.get(i.wrapping_sub(1)).copied().unwrap_or("")
    }

    fn bad(&self, what: &str, raw: &str) -> DecodeError {
        let raw: String = raw.chars().take(16).collect();
        DecodeError::new(
            Reject::Nmea,
            format!("{} {what} {raw:?} is malformed", self.sentence),
        )
    }
}

impl NmeaDecoder {
    pub fn new() -> Self {
        let n = |s: &str| Arc::from(s);
        NmeaDecoder {
            names: Arc::new(Names {
                sentence: n("sentence"),
                talker: n("talker"),
                time: n("time"),
                lat: n("lat"),
                lon: n("lon"),
                fix_quality: n("fix_quality"),
                satellites: n("satellites"),
                hdop: n("hdop"),
                altitude_m: n("altitude_m"),
                geoid_separation_m: n("geoid_separation_m"),
                valid: n("valid"),
                speed_knots: n("speed_knots"),
                course_deg: n("course_deg"),
                date: n("date"),
                utc: n("utc"),
                magnetic_variation_deg: n("magnetic_variation_deg"),
                mode: n("mode"),
                course_true_deg: n("course_true_deg"),
                course_magnetic_deg: n("course_magnetic_deg"),
                speed_kmh: n("speed_kmh"),
            }),
        }
    }
}

impl Decode for NmeaDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        if frame.trim_ascii().is_empty() {
            return Ok(Decoded::Skip);
        }
        let body = verify(frame.trim_ascii_start()).ok_or_else(|| {
            DecodeError::new(
                Reject::Checksum,
                "not an NMEA sentence with a matching *hh checksum",
            )
        })?;
        let body = std::str::from_utf8(body)
            .map_err(|_| DecodeError::new(Reject::NotText, "sentence is not UTF-8 text"))?;
        let mut split = body.split(',');
        let address = split.next().unwrap_or("");
        if address.starts_with('P') {
            return Ok(Decoded::Skip);
        }
        let (talker, kind) = match address.as_bytes() {
            [t1, t2, _, _, _] if t1.is_ascii_uppercase() && t2.is_ascii_alphanumeric() => {
                address.split_at(2)
            }
            _ => {
                return Err(DecodeError::new(
                    Reject::Nmea,
                    format!(
                        "sentence address {:?} is not a talker and a type",
                        address.chars().take(16).collect::<String>()
                    ),
                ));
            }
        };
        let (sentence, min) = match kind {
            "GGA" => ("GGA", 11),
            "RMC" => ("RMC", 11),
            "VTG" => ("VTG", 8),
            _ => return Ok(Decoded::Skip),
        };
        // NMEA 0183 sentences are printable ASCII; a control character is
        // line noise, not part of a field (see `typed::control_char`).
        if let Some(c) = control_char(body) {
            return Err(not_text("sentence", c));
        }
        let parts = Parts::new(sentence, split);
        if parts.count < min {
            return Err(DecodeError::new(
                Reject::Nmea,
                format!(
                    "{sentence} has {} fields; at least {min} expected",
                    parts.count
                ),
            ));
        }
        let n = &*self.names;
        let mut out = Out(fields);
        out.0.reserve(12);
        out.push(&n.sentence, Some(Value::Str(sentence.to_string())));
        out.push(&n.talker, Some(Value::Str(talker.to_string())));
        match sentence {
            "GGA" => {
                out.push(&n.time, time(&parts, 1)?.map(Value::Str));
                out.push(&n.lat, degrees(&parts, 2, Axis::Lat)?);
                out.push(&n.lon, degrees(&parts, 4, Axis::Lon)?);
                out.push(&n.fix_quality, int(&parts, 6, "fix quality")?);
                out.push(&n.satellites, int(&parts, 7, "satellites")?);
                out.push(&n.hdop, number(&parts, 8, "hdop")?);
                out.push(&n.altitude_m, number(&parts, 9, "altitude")?);
                out.push(
                    &n.geoid_separation_m,
                    number(&parts, 11, "geoid separation")?,
                );
            }
            "RMC" => {
                let t = time(&parts, 1)?;
                let valid = match parts.get(2) {
                    "" => None,
                    "A" => Some(Value::Bool(true)),
                    "V" => Some(Value::Bool(false)),
                    other => return Err(parts.bad("status", other)),
                };
                let d = date(&parts, 9)?;
                let utc = match (&d, &t) {
                    (Some(d), Some(t)) => Some(Value::Str(format!("{d}T{t}Z"))),
                    _ => None,
                };
                out.push(&n.time, t.map(Value::Str));
                out.push(&n.valid, valid);
                out.push(&n.lat, degrees(&parts, 3, Axis::Lat)?);
                out.push(&n.lon, degrees(&parts, 5, Axis::Lon)?);
                out.push(&n.speed_knots, number(&parts, 7, "speed")?);
                out.push(&n.course_deg, number(&parts, 8, "course")?);
                out.push(&n.date, d.map(Value::Str));
                out.push(&n.utc, utc);
                out.push(&n.magnetic_variation_deg, variation(&parts, 10)?);
                out.push(&n.mode, mode(&parts, 12)?);
            }
            _ => {
                out.push(&n.course_true_deg, number(&parts, 1, "true course")?);
                out.push(
                    &n.course_magnetic_deg,
                    number(&parts, 3, "magnetic course")?,
                );
                out.push(&n.speed_knots, number(&parts, 5, "speed")?);
                out.push(&n.speed_kmh, number(&parts, 7, "speed")?);
                out.push(&n.mode, mode(&parts, 9)?);
            }
        }
        Ok(Decoded::Fields(out.0))
    }
}

struct Out(Vec<Field>);

impl Out {
    fn push(&mut self, name: &Arc<str>, value: Option<Value>) {
        if let Some(value) = value {
            self.0.push(Field {
                name: name.clone(),
                value,
            });
        }
    }
}

/// A plain NMEA decimal (`-12.5`, `007`): no exponent, no `inf`.
fn decimal(s: &str) -> Option<f64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let mut dots = 0;
    let mut any = false;
    for c in digits.bytes() {
        match c {
            b'0'..=b'9' => any = true,
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if !any || dots > 1 {
        return None;
    }
    s.parse().ok()
}

fn number(p: &Parts, i: usize, what: &str) -> Result<Option<Value>, DecodeError> {
    match p.get(i) {
        "" => Ok(None),
        raw => decimal(raw)
            .map(|f| Some(Value::Float(f)))
            .ok_or_else(|| p.bad(what, raw)),
    }
}

fn int(p: &Parts, i: usize, what: &str) -> Result<Option<Value>, DecodeError> {
    match p.get(i) {
        "" => Ok(None),
        raw if raw.len() <= 6 && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(raw.parse().ok().map(Value::Int))
        }
        raw => Err(p.bad(what, raw)),
    }
}

/// Two ASCII digits as a number.
fn two(b: &[u8]) -> Option<u8> {
    match b {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

/// `hhmmss[.sss]` as `hh:mm:ss[.sss]`.
fn time(p: &Parts, i: usize) -> Result<Option<String>, DecodeError> {
    let raw = p.get(i);
    if raw.is_empty() {
        return Ok(None);
    }
    let b = raw.as_bytes();
    let ok = b.len() >= 6
        && two(&b[0..2]).is_some_and(|h| h < 24)
        && two(&b[2..4]).is_some_and(|m| m < 60)
        && two(&b[4..6]).is_some_and(|s| s < 61)
        && match &b[6..] {
            [] => true,
            [b'.', frac @ ..] => !frac.is_empty() && frac.iter().all(u8::is_ascii_digit),
            _ => false,
        };
    if !ok {
        return Err(p.bad("time", raw));
    }
    Ok(Some(format!("{}:{}:{}", &raw[0..2], &raw[2..4], &raw[4..])))
}

/// `ddmmyy` as `20yy-mm-dd`, a real calendar day.
fn date(p: &Parts, i: usize) -> Result<Option<String>, DecodeError> {
    let raw = p.get(i);
    if raw.is_empty() {
        return Ok(None);
    }
    let b = raw.as_bytes();
    let parsed = match b {
        [d @ .., _, _, _, _] if b.len() == 6 => two(d).zip(two(&b[2..4])).zip(two(&b[4..6])),
        _ => None,
    };
    let Some(((day, month), year)) = parsed else {
        return Err(p.bad("date", raw));
    };
    let year = 2000 + u32::from(year);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(p.bad("date", raw)),
    };
    if day == 0 || day > days {
        return Err(p.bad("date", raw));
    }
    Ok(Some(format!("{year}-{month:02}-{day:02}")))
}

#[derive(Clone, Copy)]
enum Axis {
    Lat,
    Lon,
}

/// `ddmm.mmmm` + `N`/`S` (or `dddmm.mmmm` + `E`/`W`) as signed decimal
/// degrees, south and west negative.
fn degrees(p: &Parts, i: usize, axis: Axis) -> Result<Option<Value>, DecodeError> {
    let (what, max, pos, neg) = match axis {
        Axis::Lat => ("latitude", 90.0, "N", "S"),
        Axis::Lon => ("longitude", 180.0, "E", "W"),
    };
    let raw = p.get(i);
    if raw.is_empty() {
        return Ok(None);
    }
    let whole = raw.find('.').unwrap_or(raw.len());
    // At least one degree digit and two of minutes; at most three degrees.
    if !(3..=5).contains(&whole) || raw.starts_with('-') {
        return Err(p.bad(what, raw));
    }
    let Some((deg, min)) = raw.split_at_checked(whole - 2) else {
        return Err(p.bad(what, raw));
    };
    let deg = deg.bytes().try_fold(0.0, |acc: f64, b| {
        b.is_ascii_digit().then(|| acc * 10.0 + f64::from(b - b'0'))
    });
    let (Some(deg), Some(min)) = (deg, decimal(min)) else {
        return Err(p.bad(what, raw));
    };
    let value = deg + min / 60.0;
    if min >= 60.0 || value > max {
        return Err(p.bad(what, raw));
    }
    let hemisphere = p.get(i + 1);
    let value = if hemisphere == pos {
        value
    } else if hemisphere == neg {
        -value
    } else {
        return Err(p.bad(&format!("{what} hemisphere"), hemisphere));
    };
    Ok(Some(Value::Float(value)))
}

/// Magnetic variation and its `E`/`W` (west negative).
fn variation(p: &Parts, i: usize) -> Result<Option<Value>, DecodeError> {
    let Some(Value::Float(v)) = number(p, i, "magnetic variation")? else {
        return Ok(None);
    };
    if !(0.0..=180.0).contains(&v) {
        return Err(p.bad("magnetic variation", p.get(i)));
    }
    match p.get(i + 1) {
        "E" => Ok(Some(Value::Float(v))),
        "W" => Ok(Some(Value::Float(-v))),
        other => Err(p.bad("magnetic variation direction", other)),
    }
}

/// The NMEA 2.3 mode indicator (`A`utonomous, `D`ifferential, `N`ot
/// valid, ...), one letter.
fn mode(p: &Parts, i: usize) -> Result<Option<Value>, DecodeError> {
    match p.get(i) {
        "" => Ok(None),
        m if m.len() == 1 && m.as_bytes()[0].is_ascii_uppercase() => {
            Ok(Some(Value::Str(m.to_string())))
        }
        other => Err(p.bad("mode", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::framing::nmea::sentence;

    fn fields(body: &str) -> Vec<(String, Value)> {
        match NmeaDecoder::new().decode(sentence(body).as_bytes()) {
            Ok(Decoded::Fields(f)) => f
                .into_iter()
                .map(|f| (f.name.to_string(), f.value))
                .collect(),
            other => panic!("{body}: {other:?}"),
        }
    }

    fn get<'a>(f: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
        f.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn float(f: &[(String, Value)], name: &str) -> f64 {
        match get(f, name) {
            Some(Value::Float(v)) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    fn reject(body: &str) -> DecodeError {
        NmeaDecoder::new()
            .decode(sentence(body).as_bytes())
            .unwrap_err()
    }

    #[test]
    fn a_control_character_in_a_decoded_sentence_is_not_text() {
        let tail = "; text may hold no control character but TAB";
        for (body, code) in [
            ("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A\u{1}", "U+0001"),
            // Even in a field the decoder does not keep.
            (
                "GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,\0,",
                "U+0000",
            ),
            (
                "GNRMC,123519.00,A,4807.038,S,01131.000,W,022.4,084.4,251126,003.1,W,A\u{7f}",
                "U+007F",
            ),
        ] {
            let e = reject(body);
            assert_eq!(e.reason, Reject::NotText, "{body:?}: {}", e.detail);
            assert_eq!(
                e.detail,
                format!("sentence holds the control character {code}{tail}")
            );
        }
        // Sentences that are not decoded stay skipped.
        assert_eq!(
            NmeaDecoder::new()
                .decode(sentence("GPGSV,1,1,\0").as_bytes())
                .unwrap(),
            Decoded::Skip
        );
    }

    #[test]
    fn gga_from_the_nmea_reference() {
        // The classic example, checksum as published (*47).
        let d = NmeaDecoder::new();
        let Decoded::Fields(f) = d
            .decode(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
            .unwrap()
        else {
            panic!()
        };
        let f: Vec<_> = f
            .into_iter()
            .map(|f| (f.name.to_string(), f.value))
            .collect();
        assert_eq!(get(&f, "sentence"), Some(&s("GGA")));
        assert_eq!(get(&f, "talker"), Some(&s("GP")));
        assert_eq!(get(&f, "time"), Some(&s("12:35:19")));
        assert!((float(&f, "lat") - (48.0 + 7.038 / 60.0)).abs() < 1e-12);
        assert!((float(&f, "lon") - (11.0 + 31.0 / 60.0)).abs() < 1e-12);
        assert_eq!(get(&f, "fix_quality"), Some(&Value::Int(1)));
        assert_eq!(get(&f, "satellites"), Some(&Value::Int(8)));
        assert_eq!(float(&f, "hdop"), 0.9);
        assert_eq!(float(&f, "altitude_m"), 545.4);
        assert_eq!(float(&f, "geoid_separation_m"), 46.9);
        assert_eq!(f.len(), 10);
    }

    #[test]
    fn gga_south_west_and_without_a_fix() {
        // A u-blox style GNSS sentence from the southern/western hemispheres.
        let f = fields("GNGGA,001043.00,3351.0823,S,15112.6789,W,2,12,0.75,40.3,M,21.6,M,1.0,0000");
        assert_eq!(get(&f, "talker"), Some(&s("GN")));
        assert_eq!(get(&f, "time"), Some(&s("00:10:43.00")));
        assert!((float(&f, "lat") + (33.0 + 51.0823 / 60.0)).abs() < 1e-12);
        assert!((float(&f, "lon") + (151.0 + 12.6789 / 60.0)).abs() < 1e-12);
        // No fix yet: empty fields are left out.
        let f = fields("GPGGA,,,,,,0,00,99.99,,,,,,");
        assert_eq!(
            f,
            [
                ("sentence".into(), s("GGA")),
                ("talker".into(), s("GP")),
                ("fix_quality".into(), Value::Int(0)),
                ("satellites".into(), Value::Int(0)),
                ("hdop".into(), Value::Float(99.99)),
            ]
        );
    }

    #[test]
    fn rmc_with_date_utc_and_variation() {
        // The NMEA reference example (*6A as published).
        let Decoded::Fields(f) = NmeaDecoder::new()
            .decode(b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A")
            .unwrap()
        else {
            panic!()
        };
        let f: Vec<_> = f
            .into_iter()
            .map(|f| (f.name.to_string(), f.value))
            .collect();
        assert_eq!(get(&f, "valid"), Some(&Value::Bool(true)));
        assert_eq!(float(&f, "speed_knots"), 22.4);
        assert_eq!(float(&f, "course_deg"), 84.4);
        assert_eq!(get(&f, "date"), Some(&s("2094-03-23")));
        assert_eq!(get(&f, "utc"), Some(&s("2094-03-23T12:35:19Z")));
        assert_eq!(float(&f, "magnetic_variation_deg"), -3.1);
        assert_eq!(get(&f, "mode"), None);
        // NMEA 2.3 with a mode field (gpsd test log style).
        let f = fields("GPRMC,123519.00,A,4807.038,N,01131.000,E,0.02,,251126,,,D");
        assert_eq!(get(&f, "utc"), Some(&s("2026-11-25T12:35:19.00Z")));
        assert_eq!(get(&f, "mode"), Some(&s("D")));
        assert_eq!(get(&f, "course_deg"), None);
        assert_eq!(get(&f, "magnetic_variation_deg"), None);
        let f = fields("GPRMC,,V,,,,,,,,,,N");
        assert_eq!(get(&f, "valid"), Some(&Value::Bool(false)));
        assert_eq!(get(&f, "utc"), None);
    }

    #[test]
    fn the_utc_field_is_a_time_field() {
        use crate::config::TimeFormat;
        use crate::serial::format::time::TimeField;
        let Decoded::Fields(f) = NmeaDecoder::new()
            .decode(sentence("GNRMC,120000.50,A,4807.038,N,01131.000,E,0.0,,251126,,,A").as_bytes())
            .unwrap()
        else {
            panic!()
        };
        let t = TimeField::new("utc", TimeFormat::Rfc3339).read(&f).unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + std::time::Duration::new(1_795_608_000, 500_000_000)
        );
    }

    #[test]
    fn vtg_old_and_new_forms() {
        let Decoded::Fields(f) = NmeaDecoder::new()
            .decode(b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48")
            .unwrap()
        else {
            panic!()
        };
        let f: Vec<_> = f
            .into_iter()
            .map(|f| (f.name.to_string(), f.value))
            .collect();
        assert_eq!(float(&f, "course_true_deg"), 54.7);
        assert_eq!(float(&f, "course_magnetic_deg"), 34.4);
        assert_eq!(float(&f, "speed_knots"), 5.5);
        assert_eq!(float(&f, "speed_kmh"), 10.2);
        let f = fields("GPVTG,,T,,M,0.016,N,0.030,K,A");
        assert_eq!(get(&f, "course_true_deg"), None);
        assert_eq!(get(&f, "mode"), Some(&s("A")));
    }

    #[test]
    fn other_and_proprietary_sentences_are_skipped() {
        let d = NmeaDecoder::new();
        for body in [
            "GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00",
            "PUBX,00,081350.00,4717.113210,N",
            "PGRME,15.0,M,45.0,M,25.0,M",
            "AIVDM,1,1,,A,13aGmP0P00PD;88MD5MTDww@2<0L,0",
        ] {
            assert_eq!(
                d.decode(sentence(body).as_bytes()).unwrap(),
                Decoded::Skip,
                "{body}"
            );
        }
        assert_eq!(d.decode(b"\r\n").unwrap(), Decoded::Skip);
    }

    #[test]
    fn bad_checksums_are_counted_as_checksum() {
        let d = NmeaDecoder::new();
        for frame in [
            &b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48"[..],
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            b"GPGGA,1*49",
            b"hello",
        ] {
            assert_eq!(d.decode(frame).unwrap_err().reason, Reject::Checksum);
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        for (body, what) in [
            (
                "GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "latitude",
            ),
            (
                "GPGGA,123519,4860.000,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "latitude",
            ),
            (
                "GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "latitude hemisphere",
            ),
            (
                "GPGGA,123519,4807.038,N,18131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "longitude",
            ),
            (
                "GPGGA,123519,4807.038,N,01131.000,,1,08,0.9,545.4,M,46.9,M,,",
                "longitude hemisphere",
            ),
            (
                "GPGGA,123519,48O7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "latitude",
            ),
            (
                "GPGGA,126019,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "time",
            ),
            (
                "GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,",
                "fix quality",
            ),
            (
                "GPGGA,123519,4807.038,N,01131.000,E,1,08,1e3,545.4,M,46.9,M,,",
                "hdop",
            ),
            ("GPGGA,123519,4807.038,N,01131.000,E,1,08", "fields"),
            (
                "GPRMC,123519,Q,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
                "status",
            ),
            (
                "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,300294,003.1,W",
                "date",
            ),
            (
                "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,X",
                "variation",
            ),
            ("GPVTG,inf,T,,M,0.016,N,0.030,K,A", "true course"),
            ("G,1,2", "address"),
        ] {
            let e = reject(body);
            assert_eq!(e.reason, Reject::Nmea, "{body}");
            assert!(e.detail.contains(what), "{body}: {}", e.detail);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_input_panics(
                bytes in prop::collection::vec(any::<u8>(), 0..96),
                body in "(GP|GN|P|X)(GGA|RMC|VTG|GSV)(,[0-9.NSEWAVTMK-é]{0,12}){0,15}",
            ) {
                let d = NmeaDecoder::new();
                let _ = d.decode(&bytes);
                let _ = d.decode(sentence(&body).as_bytes());
            }

            #[test]
            fn positions_read_back_as_signed_degrees(
                lat in -89.999_f64..89.999,
                lon in -179.999_f64..179.999,
            ) {
                let dm = |v: f64, w: usize| {
                    let a = v.abs();
                    let deg = a.trunc();
                    format!("{:0w$}{:07.4}", deg as u32, (a - deg) * 60.0, w = w)
                };
                let body = format!(
                    "GPGGA,120000,{},{},{},{},1,05,1.0,10.0,M,0.0,M,,",
                    dm(lat, 2),
                    if lat < 0.0 { "S" } else { "N" },
                    dm(lon, 3),
                    if lon < 0.0 { "W" } else { "E" },
                );
                let f = fields(&body);
                // Four decimals of minutes: 1/600000 of a degree.
                prop_assert!((float(&f, "lat") - lat).abs() < 2e-6, "{body}");
                prop_assert!((float(&f, "lon") - lon).abs() < 2e-6, "{body}");
            }
        }
    }
}
