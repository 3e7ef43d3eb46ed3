//! Reading RFC 3339 timestamps into `SystemTime`, on every word size.
//!
//! humantime's parser refuses any time after 2038-01-19 on 32-bit Linux
//! (it assumes a 32-bit `time_t`), which would make the armhf gateway
//! reject device timestamps, and the armhf `open` reject every message,
//! from 2038 on. Rust's `SystemTime` holds 64-bit seconds on those targets
//! too, so this reads the fields itself and adds them to the epoch.
//! Formatting stays with humantime, which has no such limit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much of RFC 3339 to insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`: what [`crate::record::format_ts`]
    /// writes.
    Utc,
    /// Also a space for the `T`, a numeric offset (`+02:00`, `-05:30`), or
    /// no zone at all (read as UTC): what sensors send.
    Lenient,
}

/// The time `s` names, or `None` when it is not such a timestamp, names an
/// impossible date or time, or lies before 1970 (no sensor reading does).
pub fn parse(s: &str, strictness: Strictness) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let sep_ok = match b.get(10)? {
        b'T' | b't' => true,
        b' ' => strictness == Strictness::Lenient,
        _ => false,
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !sep_ok
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
        || year < 1970
    {
        return None;
    }
    // The fraction: up to nine digits.
    let mut at = 19;
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let value = num(at + 1, digits)?;
        nanos = u32::try_from(value * 10i64.pow(9 - digits as u32)).ok()?;
        at += 1 + digits;
    }
    let offset = match (&b[at..], strictness) {
        ([b'Z' | b'z'], _) => 0,
        ([], Strictness::Lenient) => 0,
        ([sign @ (b'+' | b'-'), _, _, b':', _, _], Strictness::Lenient) => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = oh * 60 + om;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset * 60;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use Strictness::{Lenient, Utc};
    use proptest::prelude::*;

    fn at(secs: u64, nanos: u32) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn reads_what_the_wire_format_writes() {
        assert_eq!(parse("1970-01-01T00:00:00Z", Utc), at(0, 0));
        assert_eq!(
            parse("2025-11-25T19:46:40.123456789Z", Utc),
            at(1_764_100_000, 123_456_789)
        );
        assert_eq!(
            parse("2026-11-25T12:00:00.5Z", Utc),
            at(1_795_608_000, 500_000_000)
        );
        // After 2038, on every word size (the armhf build included).
        assert_eq!(parse("2038-01-19T03:14:08Z", Utc), at(2_147_483_648, 0));
        assert_eq!(parse("2306-09-28T04:24:20Z", Utc), at(10_626_438_260, 0));
        assert_eq!(parse("9999-12-31T23:59:59Z", Utc), at(253_402_300_799, 0));
    }

    #[test]
    fn lenient_takes_a_space_an_offset_or_no_zone() {
        let utc = at(1_795_608_000, 0);
        assert_eq!(parse("2026-11-25 12:00:00", Lenient), utc);
        assert_eq!(parse("2026-11-25T12:00:00", Lenient), utc);
        assert_eq!(parse("2026-11-25T14:00:00+02:00", Lenient), utc);
        assert_eq!(parse("2026-11-25T06:30:00-05:30", Lenient), utc);
        for strict_only_not in [
            "2026-11-25 12:00:00Z",
            "2026-11-25T12:00:00",
            "2026-11-25T14:00:00+02:00",
        ] {
            assert_eq!(parse(strict_only_not, Utc), None, "{strict_only_not}");
        }
    }

    #[test]
    fn impossible_dates_and_malformed_text_are_refused() {
        for bad in [
            "",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T12:60:00Z",
            "2026-11-25T12:00:60Z",
            "2026-11-25T12:00:00.Z",
            "2026-11-25T12:00:00.1234567890Z",
            "2026-11-25T12:00:00ZZ",
            "1969-12-31T23:59:59Z",
            "2026/11/25T12:00:00Z",
            "２０２６-11-25T12:00:00Z",
            "2026-11-25T12:00:00+2:00",
        ] {
            assert_eq!(parse(bad, Lenient), None, "{bad:?}");
        }
        assert_eq!(parse("2000-02-29T00:00:00Z", Utc), at(951_782_400, 0));
    }

    proptest! {
        /// Whatever `format_ts` writes (1970 to 9999) reads back exactly.
        #[test]
        fn format_then_parse_is_the_identity(secs in 0u64..253_402_300_800, nanos in 0u32..1_000_000_000) {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let s = crate::record::format_ts(t);
            prop_assert_eq!(parse(&s, Utc), Some(t));
            prop_assert_eq!(parse(&s, Lenient), Some(t));
        }

        /// Never panics on any text.
        #[test]
        fn any_text_is_read_or_refused(s in "\\PC{0,40}") {
            let _ = parse(&s, Lenient);
        }
    }
}
