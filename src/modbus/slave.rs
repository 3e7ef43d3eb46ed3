//! One slave's configured values: the requests that read them, and the
//! record's fields from the answers, without I/O.

use std::sync::Arc;

use super::bus::Answer;
use super::plan::{Plan, PlanError, Request, Span};
use super::value::{self, Kind, Order, ValueError};
use crate::record::{Field, Value};

/// One configured value: where it is and how its registers are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: Arc<str>,
    pub span: Span,
    pub kind: Kind,
    pub order: Order,
    /// `scale` and `offset`, when either is set.
    pub linear: Option<(f64, f64)>,
}

/// Why a poll's answers made no record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadError {
    #[error("{name}: {error}")]
    Value { name: Arc<str>, error: ValueError },
    #[error("answer {request} is not of its request's table")]
    Mismatch { request: usize },
}

/// A slave's values and the requests that read them all.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    points: Vec<Point>,
    plan: Plan,
}

impl Reading {
    /// The fewest requests for `points`, reading through gaps of at most
    /// `max_gap` registers (or bits).
    pub fn new(points: Vec<Point>, max_gap: u16) -> Result<Reading, PlanError> {
        let spans: Vec<Span> = points.iter().map(|p| p.span).collect();
        let plan = Plan::new(&spans, max_gap)?;
        Ok(Reading { points, plan })
    }

    /// The requests of one poll, in the order their answers are expected.
    pub fn requests(&self) -> &[Request] {
        &self.plan.requests
    }

    /// The record's fields, in the order the points were configured, from
    /// the answers to [`Reading::requests`] (one each, in order), added
    /// to `fields` (empty).
    pub fn fields(
        &self,
        answers: &[Answer],
        mut fields: Vec<Field>,
    ) -> Result<Vec<Field>, ReadError> {
        fields.reserve(self.points.len());
        for (point, place) in self.points.iter().zip(&self.plan.places) {
            let at = usize::from(place.offset);
            let len = usize::from(point.span.len);
            let value = match answers.get(place.request) {
                Some(Answer::Bits(bits)) if point.span.table.is_bits() => {
                    let bit = bits.get(at).copied();
                    Value::Bool(bit.ok_or(ReadError::Mismatch {
                        request: place.request,
                    })?)
                }
                Some(Answer::Registers(regs)) if !point.span.table.is_bits() => {
                    let regs = regs.get(at..at + len).ok_or(ReadError::Mismatch {
                        request: place.request,
                    })?;
                    value::decode(point.kind, point.order, regs, point.linear).map_err(|error| {
                        ReadError::Value {
                            name: Arc::clone(&point.name),
                            error,
                        }
                    })?
                }
                _ => {
                    return Err(ReadError::Mismatch {
                        request: place.request,
                    });
                }
            };
            fields.push(Field {
                name: Arc::clone(&point.name),
                value,
            });
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::Table;
    use super::*;

    fn point(name: &str, table: Table, address: u16, kind: Kind) -> Point {
        let len = if table.is_bits() { 1 } else { kind.registers() };
        Point {
            name: Arc::from(name),
            span: Span {
                table,
                address,
                len,
            },
            kind,
            order: Order::default(),
            linear: None,
        }
    }

    #[test]
    fn the_fields_come_from_their_places_in_the_answers_in_configured_order() {
        let mut energy = point("energy", Table::Holding, 10, Kind::U32);
        energy.order = Order::parse("CDAB", Kind::U32).unwrap();
        energy.linear = Some((0.01, 0.0));
        let reading = Reading::new(
            vec![
                point("voltage", Table::Input, 0, Kind::F32),
                energy,
                point("temp", Table::Holding, 12, Kind::I16),
                point("relay", Table::Coil, 0, Kind::Bool),
                point("door", Table::Discrete, 3, Kind::Bool),
            ],
            0,
        )
        .unwrap();
        let tables: Vec<Table> = reading.requests().iter().map(|r| r.table).collect();
        assert_eq!(
            tables,
            [Table::Coil, Table::Discrete, Table::Holding, Table::Input]
        );
        let answers = [
            Answer::Bits(vec![true]),
            Answer::Bits(vec![false]),
            Answer::Registers(vec![0x86A0, 0x0001, 0xFF38]),
            Answer::Registers(vec![0x4366, 0x8000]),
        ];
        let fields = reading.fields(&answers, Vec::new()).unwrap();
        let got: Vec<(&str, Value)> = fields.iter().map(|f| (&*f.name, f.value.clone())).collect();
        assert_eq!(
            got,
            [
                ("voltage", Value::Float(230.5)),
                ("energy", Value::Float(1000.0)),
                ("temp", Value::Int(-200)),
                ("relay", Value::Bool(true)),
                ("door", Value::Bool(false)),
            ]
        );
    }

    #[test]
    fn a_value_that_cannot_be_read_names_its_point() {
        let reading = Reading::new(vec![point("flow", Table::Holding, 0, Kind::F32)], 0).unwrap();
        let nan = [Answer::Registers(vec![0x7FC0, 0])];
        let err = reading.fields(&nan, Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "flow: is not a finite number");
        let bits = [Answer::Bits(vec![true, true])];
        assert_eq!(
            reading.fields(&bits, Vec::new()),
            Err(ReadError::Mismatch { request: 0 })
        );
        assert_eq!(
            reading.fields(&[], Vec::new()),
            Err(ReadError::Mismatch { request: 0 })
        );
    }
}
