//! Sizes and durations as the operator writes them: `"8MiB"`, `"250ms"`.
//!
//! Durations are parsed by `humantime`. Sizes are parsed here because the
//! size crates accept what this file refuses on purpose: fractions
//! (`1.5MiB`) and bare `K`/`M`/`G`, which do not say whether the writer
//! meant powers of 1000 or of 1024.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * 1024;

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"250ms\", \"30s\" or \"5m\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s.trim()).map_err(|e| {
                E::custom(format!(
                    "invalid duration \"{s}\" ({e}); write it like \"250ms\", \"30s\" or \"5m\""
                ))
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" for seconds or \"{v}ms\" for milliseconds"
            )))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" for seconds or \"{v}ms\" for milliseconds"
            )))
        }
    }
    d.deserialize_any(V)
}

/// [`de_duration`] for an optional key (absent: `None`, by `serde(default)`).
pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub(super) fn de_size_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as \"64KiB\", \"256MiB\", \"1MB\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
    }
    d.deserialize_any(V)
}

pub(super) fn de_size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = de_size_u64(d)?;
    usize::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "{} is more than this machine can address",
            format_size(n)
        ))
    })
}

/// A percentage, kept exactly as hundredths of a percent (`"5%"` is 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u32);

impl Percent {
    pub const fn from_basis_points(bp: u32) -> Percent {
        Percent(bp)
    }

    /// As a fraction: `"5%"` is 0.05.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 100 == 0 {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
        }
    }
}

/// Parses `"5%"`, `"0.5%"`, `"0%"`: 0 to 100 with at most two decimals.
pub fn parse_percent(s: &str) -> Result<Percent, String> {
    let bad = || format!("invalid percentage \"{s}\"; write it like \"5%\" or \"0.5%\"");
    let t = s.trim().strip_suffix('%').ok_or_else(bad)?.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || frac.len() > 2
        || !(int.chars().chain(frac.chars())).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: u32 = int.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let bp = int
        .checked_mul(100)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(bad)?;
    if bp > 10_000 {
        return Err(format!("{s} is more than 100%"));
    }
    Ok(Percent(bp))
}

pub(super) fn de_percent<'de, D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Percent;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a percentage such as \"5%\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Percent, E> {
            parse_percent(s).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Parses a size in bytes: a plain number (`1500`), or a number with a unit,
/// IEC (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024) or SI (`kB`, `MB`, `GB`,
/// `TB`: powers of 1000), or `B`. Units are case-insensitive; a space between
/// number and unit is allowed. Bare `K`/`M`/`G` are refused because they do
/// not say which of the two the writer meant.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    let unit = unit.trim_start();
    let expected = "write it like \"64KiB\", \"256MiB\", \"1MB\" or a number of bytes";
    if digits.is_empty() {
        return Err(format!("invalid size \"{s}\"; {expected}"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("size \"{s}\" is too large"))?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => 1024 * MIB,
        "tib" => 1024 * 1024 * MIB,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        _ => {
            return Err(format!(
                "invalid size \"{s}\": unknown unit \"{unit}\"; {expected} (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// Writes a byte count the way an operator would: in the largest IEC unit
/// that divides it, else the largest SI unit, else in bytes. The result
/// parses back to the same number with [`parse_size`].
pub fn format_size(n: u64) -> String {
    if n == 0 {
        return "0B".to_string();
    }
    const UNITS: &[(u64, &str)] = &[
        (1024 * 1024 * MIB, "TiB"),
        (1024 * MIB, "GiB"),
        (MIB, "MiB"),
        (KIB, "KiB"),
        (1000 * 1000 * 1000 * 1000, "TB"),
        (1000 * 1000 * 1000, "GB"),
        (1000 * 1000, "MB"),
        (1000, "kB"),
    ];
    for &(factor, name) in UNITS {
        if n % factor == 0 {
            return format!("{}{name}", n / factor);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod percent_tests {
    use super::*;

    #[test]
    fn percentages_parse_exactly_and_print_back() {
        assert_eq!(parse_percent("5%").unwrap(), Percent(500));
        assert_eq!(parse_percent(" 0.5 %").unwrap(), Percent(50));
        assert_eq!(parse_percent("12.25%").unwrap(), Percent(1225));
        assert_eq!(parse_percent("0%").unwrap().fraction(), 0.0);
        assert_eq!(parse_percent("5%").unwrap().fraction(), 0.05);
        for bad in ["5", "five%", "1.234%", "-1%", "101%", "%", ".5%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
        assert_eq!(Percent(500).to_string(), "5%");
        assert_eq!(Percent(1225).to_string(), "12.25%");
        assert_eq!(Percent(50).to_string(), "0.50%");
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;

    use super::super::test_support::{Dir, MINIMAL, only_problem};
    use super::*;

    #[test]
    fn sizes_parse_in_iec_si_and_bytes() {
        for (s, n) in [
            ("0", 0),
            ("1500", 1500),
            ("16B", 16),
            ("1KiB", 1024),
            ("64KiB", 65536),
            ("256MiB", 256 << 20),
            ("8 MiB", 8 << 20),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("1kB", 1000),
            ("1KB", 1000),
            ("1MB", 1_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("1mib", 1 << 20),
            (" 7 kib ", 7168),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in [
            "",
            "KiB",
            "1K",
            "1M",
            "1.5MiB",
            "-1",
            "1 MiBs",
            "99999999999999999999",
            "16EiB",
            "20000000TiB",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(parse_size("1K").unwrap_err().contains("KiB"));
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1536), "3kB".replace("3kB", "1536B"));
        assert_eq!(format_size(256 << 20), "256MiB");
    }

    #[test]
    fn a_bad_size_names_the_key() {
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[buffer]\nmemory = \"8 megs\"\n\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "buffer.memory");
        assert!(p.message.contains("megs"), "{}", p.message);
    }

    #[test]
    fn durations_parse_with_units_only() {
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[batch]\nlinger = \"1m 30s\"\n[mqtt]"));
        assert_eq!(d.load().unwrap().batch.linger, Duration::from_secs(90));
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[batch]\nlinger = 1.5\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "batch.linger");
        assert!(p.message.contains("duration"), "{}", p.message);
    }

    #[test]
    fn a_bad_duration_names_the_file_and_the_key() {
        let d = Dir::example();
        let text = fs::read_to_string(d.main())
            .unwrap()
            .replace("linger = \"200ms\"", "linger = \"fast\"");
        fs::write(d.main(), text).unwrap();
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.source, d.main().display().to_string());
        assert_eq!(p.key, "batch.linger");
        assert!(
            p.message.contains("\"fast\"") && p.message.contains("30s"),
            "{}",
            p.message
        );

        let d = Dir::example();
        let bad = d.conf_d("30-z.toml", "[mqtt]\nkeepalive = 30\n");
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(
            (p.source.as_str(), p.key.as_str()),
            (bad.display().to_string().as_str(), "mqtt.keepalive")
        );
        assert!(p.message.contains("\"30s\""), "{}", p.message);
    }

    proptest! {
        #[test]
        fn format_size_reads_back(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        #[test]
        fn units_multiply(n in 0u64..1_000_000, unit in prop::sample::select(vec![
            ("B", 1u64), ("KiB", 1024), ("MiB", 1 << 20), ("GiB", 1 << 30),
            ("kB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
        ])) {
            prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n * unit.1));
            prop_assert_eq!(parse_size(&format!("{n} {}", unit.0.to_lowercase())), Ok(n * unit.1));
        }

        #[test]
        fn parse_size_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }
    }
}
