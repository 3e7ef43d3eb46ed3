//! Which requests read a slave's registers: contiguous values of one table
//! merged into as few requests as the protocol allows, without I/O.
//!
//! A Modbus request reads at most 125 registers (functions 3 and 4) or
//! 2000 bits (functions 1 and 2) from one table. Values next to each other
//! share a request; a gap of at most `max_gap` unread registers (or bits)
//! between two values is read through rather than split, since one request
//! costs a turnaround on the bus (at 9600 baud, about as long as 4
//! registers of answer) while a register read through costs 2 bytes. The
//! default gap is 0: some devices answer a read of an address they do not
//! map with an exception, which would fail the whole request.

use std::fmt;

/// A Modbus data table, by the function code that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Function 1: read/write bits.
    Coil,
    /// Function 2: read-only bits.
    Discrete,
    /// Function 3: read/write registers.
    Holding,
    /// Function 4: read-only registers.
    Input,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Coil, Table::Discrete, Table::Holding, Table::Input];

    /// The function code that reads the table.
    pub fn function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::Discrete => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// Whether the table holds bits (coils, discrete inputs) rather than
    /// 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most one request may read: 2000 bits or 125 registers (Modbus
    /// Application Protocol V1.1b3, 6.1 to 6.4).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    /// The configuration's name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one configured value lives: `len` registers (or bits) from
/// `address` in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub address: u16,
    pub len: u16,
}

impl Span {
    /// One past the last address, as a `u32` (it may be 65536).
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.len)
    }
}

/// One request: `count` registers (or bits) from `start` in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub table: Table,
    pub start: u16,
    pub count: u16,
}

/// Where a value is found in the answers: request `request`, from
/// `offset` registers (or bits) into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub request: usize,
    pub offset: u16,
}

/// The requests of one poll, and where each value is found in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub requests: Vec<Request>,
    /// In the order of the spans given to [`Plan::new`].
    pub places: Vec<Place>,
}

/// Why spans cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("is {len} {unit} long; one request reads at most {max}")]
    TooLong {
        len: u16,
        unit: &'static str,
        max: u16,
    },
    #[error("ends past the last address, 65535 ({address} + {len} {unit})")]
    PastEnd {
        address: u16,
        len: u16,
        unit: &'static str,
    },
    #[error("is empty")]
    Empty,
}

/// Whether `span` can be read at all; the error names what is wrong.
pub fn check(span: &Span) -> Result<(), PlanError> {
    let unit = if span.table.is_bits() {
        "bits"
    } else {
        "registers"
    };
    let max = span.table.max_per_request();
    if span.len == 0 {
        return Err(PlanError::Empty);
    }
    if span.len > max {
        return Err(PlanError::TooLong {
            len: span.len,
            unit,
            max,
        });
    }
    if span.end() > 65536 {
        return Err(PlanError::PastEnd {
            address: span.address,
            len: span.len,
            unit,
        });
    }
    Ok(())
}

impl Plan {
    /// The fewest requests that read every span, reading through gaps of at
    /// most `max_gap`; tables in the order coil, discrete, holding, input,
    /// and addresses ascending within each. Spans may overlap (one register
    /// read as two values). Every span must pass [`check`].
    pub fn new(spans: &[Span], max_gap: u16) -> Result<Plan, PlanError> {
        for span in spans {
            check(span)?;
        }
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| (spans[i].table, spans[i].address, spans[i].len));
        let mut requests: Vec<Request> = Vec::new();
        let mut places = vec![
            Place {
                request: 0,
                offset: 0
            };
            spans.len()
        ];
        // The request being grown: its table, start and end (exclusive).
        let mut open: Option<(Table, u32, u32)> = None;
        for i in order {
            let s = &spans[i];
            let (start, end) = (u32::from(s.address), s.end());
            let max = u32::from(s.table.max_per_request());
            open = match open {
                Some((table, first, last))
                    if table == s.table
                        && start <= last + u32::from(max_gap)
                        && end.max(last) - first <= max =>
                {
                    Some((table, first, end.max(last)))
                }
                other => {
                    if let Some(done) = other {
                        requests.push(request(done));
                    }
                    Some((s.table, start, end))
                }
            };
            let (_, first, _) = open.expect("a request is open");
            places[i] = Place {
                request: requests.len(),
                offset: (start - first) as u16,
            };
        }
        if let Some(done) = open {
            requests.push(request(done));
        }
        Ok(Plan { requests, places })
    }
}

fn request((table, first, last): (Table, u32, u32)) -> Request {
    // Both fit: `first` is an address, and a request spans at most 2000.
    Request {
        table,
        start: first as u16,
        count: (last - first) as u16,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn span(table: Table, address: u16, len: u16) -> Span {
        Span {
            table,
            address,
            len,
        }
    }

    fn req(table: Table, start: u16, count: u16) -> Request {
        Request {
            table,
            start,
            count,
        }
    }

    #[test]
    fn contiguous_values_of_a_table_share_one_request() {
        use Table::*;
        let spans = [
            span(Holding, 10, 2),
            span(Input, 0, 2),
            span(Holding, 12, 1),
            span(Coil, 0, 1),
            span(Holding, 13, 4),
            span(Discrete, 3, 1),
            span(Coil, 1, 1),
        ];
        let plan = Plan::new(&spans, 0).unwrap();
        assert_eq!(
            plan.requests,
            [
                req(Coil, 0, 2),
                req(Discrete, 3, 1),
                req(Holding, 10, 7),
                req(Input, 0, 2)
            ]
        );
        let at = |request, offset| Place { request, offset };
        assert_eq!(
            plan.places,
            [
                at(2, 0),
                at(3, 0),
                at(2, 2),
                at(0, 0),
                at(2, 3),
                at(1, 0),
                at(0, 1)
            ]
        );
    }

    #[test]
    fn gaps_up_to_max_gap_are_read_through_and_longer_ones_split() {
        use Table::Holding;
        let spans = [
            span(Holding, 0, 2),
            span(Holding, 5, 2),
            span(Holding, 20, 1),
        ];
        assert_eq!(
            Plan::new(&spans, 0).unwrap().requests,
            [req(Holding, 0, 2), req(Holding, 5, 2), req(Holding, 20, 1)]
        );
        assert_eq!(
            Plan::new(&spans, 3).unwrap().requests,
            [req(Holding, 0, 7), req(Holding, 20, 1)]
        );
        assert_eq!(
            Plan::new(&spans, 13).unwrap().requests,
            [req(Holding, 0, 21)]
        );
    }

    #[test]
    fn a_request_never_exceeds_the_protocol_limit() {
        // 63 u32 values in a row: 126 registers, one more than a request.
        let spans: Vec<Span> = (0..63).map(|i| span(Table::Input, i * 2, 2)).collect();
        let plan = Plan::new(&spans, 0).unwrap();
        assert_eq!(
            plan.requests,
            [req(Table::Input, 0, 124), req(Table::Input, 124, 2)]
        );
        assert_eq!(
            plan.places[62],
            Place {
                request: 1,
                offset: 0
            }
        );
        // 2000 coils fit one request; 2001 do not.
        let coils: Vec<Span> = (0..2001).map(|i| span(Table::Coil, i, 1)).collect();
        let plan = Plan::new(&coils, 0).unwrap();
        assert_eq!(
            plan.requests,
            [req(Table::Coil, 0, 2000), req(Table::Coil, 2000, 1)]
        );
    }

    #[test]
    fn spans_that_cannot_be_read_are_refused_with_the_reason() {
        assert_eq!(
            check(&span(Table::Holding, 0, 126))
                .unwrap_err()
                .to_string(),
            "is 126 registers long; one request reads at most 125"
        );
        assert_eq!(
            check(&span(Table::Holding, 65535, 2))
                .unwrap_err()
                .to_string(),
            "ends past the last address, 65535 (65535 + 2 registers)"
        );
        assert!(check(&span(Table::Coil, 65535, 1)).is_ok());
        assert_eq!(check(&span(Table::Coil, 0, 0)), Err(PlanError::Empty));
        assert!(Plan::new(&[span(Table::Coil, 0, 2001)], 0).is_err());
    }

    #[test]
    fn the_energy_meter_of_serial_md_takes_five_requests_or_three_with_max_gap_4() {
        // docs/SERIAL.md, "A worked example": five f32 input registers.
        let spans: Vec<Span> = [0, 6, 12, 70, 342]
            .into_iter()
            .map(|a| span(Table::Input, a, 2))
            .collect();
        assert_eq!(Plan::new(&spans, 0).unwrap().requests.len(), 5);
        assert_eq!(
            Plan::new(&spans, 4).unwrap().requests,
            [
                req(Table::Input, 0, 14),
                req(Table::Input, 70, 2),
                req(Table::Input, 342, 2)
            ]
        );
    }

    fn any_span() -> impl Strategy<Value = Span> {
        (0usize..4, 0u16..300, 1u16..8).prop_map(|(t, address, len)| Span {
            table: Table::ALL[t],
            address,
            len,
        })
    }

    proptest! {
        /// Every value is inside its request, every request is within the
        /// protocol's limit, and no two requests of a table could have been
        /// one.
        #[test]
        fn every_span_is_read_whole_by_one_request_within_the_limits(
            spans in proptest::collection::vec(any_span(), 1..80),
            max_gap in 0u16..20,
        ) {
            let plan = Plan::new(&spans, max_gap).unwrap();
            for (s, p) in spans.iter().zip(&plan.places) {
                let r = plan.requests[p.request];
                prop_assert_eq!(r.table, s.table);
                prop_assert_eq!(u32::from(r.start) + u32::from(p.offset), u32::from(s.address));
                prop_assert!(u32::from(p.offset) + u32::from(s.len) <= u32::from(r.count));
            }
            for r in &plan.requests {
                prop_assert!(r.count >= 1 && r.count <= r.table.max_per_request());
            }
            for pair in plan.requests.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.table == b.table {
                    let gap = u32::from(b.start).saturating_sub(u32::from(a.start) + u32::from(a.count));
                    let merged = u32::from(b.start) + u32::from(b.count) - u32::from(a.start);
                    prop_assert!(
                        gap > u32::from(max_gap) || merged > u32::from(a.table.max_per_request()),
                        "{a:?} and {b:?} could be one request"
                    );
                }
            }
        }
    }
}
