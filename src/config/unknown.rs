//! Unknown keys, with a "did you mean" hint for the likely typo.
//!
//! Unknown keys are found by walking the merged tree against the field lists
//! of the serde types themselves (see [`fields_of`]), so there is no second
//! list of key names to keep in step with the structs.

use std::fmt;

use config::{Map, Value, ValueKind};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::error::Problem;
use super::origin::Context;
use super::{
    Batch, Buffer, ColumnTable, Config, Gateway, LayoutField, Log, Metrics, Mqtt, Register, Seal,
    Sensor, Time,
};

impl Context<'_> {
    /// Every key the schema does not know, in every table, sorted.
    pub fn unknown_keys(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let ValueKind::Table(top) = &self.tree.kind else {
            return out;
        };
        self.unknown_in(top, "", "the top level", fields_of::<Config>(), &mut out);
        let sections: [(&str, &[&str]); 8] = [
            ("gateway", fields_of::<Gateway>()),
            ("mqtt", fields_of::<Mqtt>()),
            ("batch", fields_of::<Batch>()),
            ("buffer", fields_of::<Buffer>()),
            ("seal", fields_of::<Seal>()),
            ("log", fields_of::<Log>()),
            ("metrics", fields_of::<Metrics>()),
            ("time", fields_of::<Time>()),
        ];
        for (section, fields) in sections {
            if let Some(Value {
                kind: ValueKind::Table(t),
                ..
            }) = top.get(section)
            {
                let prefix = format!("{section}.");
                let what = format!("[{section}]");
                self.unknown_in(t, &prefix, &what, fields, &mut out);
            }
        }
        match top.get("sensor") {
            Some(
                v @ Value {
                    kind: ValueKind::Table(_),
                    ..
                },
            ) => out.push(Problem {
                source: self.origin_of(v),
                key: "sensor".to_string(),
                message: "is a single table; write each sensor as [[sensor]] (double brackets)"
                    .to_string(),
            }),
            Some(Value {
                kind: ValueKind::Array(sensors),
                ..
            }) => {
                for (i, s) in sensors.iter().enumerate() {
                    if let ValueKind::Table(t) = &s.kind {
                        let prefix = format!("sensor[{i}].");
                        self.unknown_in(t, &prefix, "[[sensor]]", fields_of::<Sensor>(), &mut out);
                        let nested: [(&str, &[&str]); 3] = [
                            ("columns", fields_of::<ColumnTable>()),
                            ("layout", fields_of::<LayoutField>()),
                            ("registers", fields_of::<Register>()),
                        ];
                        for (key, fields) in nested {
                            let Some(Value {
                                kind: ValueKind::Array(items),
                                ..
                            }) = t.get(key)
                            else {
                                continue;
                            };
                            for (j, item) in items.iter().enumerate() {
                                if let ValueKind::Table(t) = &item.kind {
                                    let prefix = format!("sensor[{i}].{key}[{j}].");
                                    let what = format!("an entry of {key}");
                                    self.unknown_in(t, &prefix, &what, fields, &mut out);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    fn unknown_in(
        &self,
        table: &Map<String, Value>,
        prefix: &str,
        what: &str,
        known: &[&str],
        out: &mut Vec<Problem>,
    ) {
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        for k in keys {
            if known.contains(&k.as_str()) {
                continue;
            }
            let hint = closest(k, known)
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            out.push(Problem {
                source: self.origin_of(&table[k]),
                key: format!("{prefix}{k}"),
                message: format!(
                    "unknown key; {hint}the keys of {what} are: {}",
                    known.join(", ")
                ),
            });
        }
    }
}

/// The closest of `candidates` to `word` by edit distance, if close enough to
/// be a likely typo.
pub(super) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The field names a serde struct accepts, read from its derived
/// `Deserialize` (which hands them to `deserialize_struct`). This keeps the
/// unknown-key check in step with the structs by construction.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::{Dir, MINIMAL, only_problem, problem_at};
    use super::*;

    #[test]
    fn a_typo_in_the_main_file_names_the_file_and_the_key() {
        let d = Dir::example();
        let text = fs::read_to_string(d.main())
            .unwrap()
            .replace("linger = ", "lingr = ");
        fs::write(d.main(), text).unwrap();
        let e = d.load().unwrap_err();
        assert_eq!(e.exit_code(), 78);
        let p = only_problem(e);
        assert_eq!(p.source, d.main().display().to_string());
        assert_eq!(p.key, "batch.lingr");
        assert!(p.message.contains("did you mean `linger`"), "{}", p.message);
    }

    #[test]
    fn a_typo_in_a_conf_d_file_names_that_file() {
        let d = Dir::example();
        d.conf_d("05-ok.toml", "[mqtt]\nport = 8884\n");
        let bad = d.conf_d("10-x.toml", "[mqtt]\nhots = \"broker2\"\n");
        let e = d.load().unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("conf.d/10-x.toml") && msg.contains("mqtt.hots"),
            "{msg}"
        );
        let p = only_problem(e);
        assert_eq!(p.source, bad.display().to_string());
        assert!(p.message.contains("did you mean `host`"));
    }

    #[test]
    fn unknown_keys_are_found_everywhere_and_all_reported() {
        let d = Dir::example();
        d.conf_d(
            "10-x.toml",
            "colour = 1\n[mqqt]\nhost = \"x\"\n[gateway]\nname = \"x\"\n",
        );
        let text =
            fs::read_to_string(d.main())
                .unwrap()
                .replacen("baud = 115200", "bud = 115200", 1);
        fs::write(d.main(), text).unwrap();
        let e = d.load().unwrap_err();
        let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["colour", "mqqt", "gateway.name", "sensor[1].bud"],
            "{e}"
        );
        assert!(
            problem_at(&e, "mqqt")
                .message
                .contains("did you mean `mqtt`")
        );
        assert!(problem_at(&e, "mqqt").source.ends_with("conf.d/10-x.toml"));
        assert_eq!(
            problem_at(&e, "sensor[1].bud").source,
            d.main().display().to_string()
        );
    }

    #[test]
    fn sensors_must_be_double_bracket_tables() {
        let d = Dir::new(&MINIMAL.replace("[[sensor]]", "[sensor]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor");
        assert!(p.message.contains("[[sensor]]"));
        let d = Dir::new(&MINIMAL.replace(
            "[[sensor]]\nname = \"s1\"\ndevice = \"/dev/ttyUSB0\"\ncolumns = [\"a\", \"b\"]\n",
            "",
        ));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor");
        assert!(p.message.contains("at least one"));
    }

    #[test]
    fn field_lists_come_from_the_structs() {
        assert_eq!(
            fields_of::<Config>(),
            [
                "gateway", "sensor", "mqtt", "batch", "buffer", "seal", "log", "metrics", "time"
            ]
        );
        assert!(fields_of::<Mqtt>().contains(&"drain_timeout"));
        assert_eq!(fields_of::<Batch>(), ["max_records", "linger"]);
    }
}
