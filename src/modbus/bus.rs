//! One Modbus RTU bus: the serial port its slaves share, one request at a
//! time, each bounded by a timeout.
//!
//! Requests go through tokio-modbus's RTU client, which checks each
//! answer's CRC, unit id and function code. Around it, what the client
//! leaves to its caller:
//! - the silence between frames (3.5 characters, 1.75 ms above 19200
//!   baud) before each request;
//! - a timeout on each request (the client has none);
//! - the tty's input discarded before each request: a slave that answered
//!   after its timeout would otherwise have its late answer taken for the
//!   answer to the next request, with the same unit id and function code,
//!   so that nothing would catch it;
//! - after a timeout or garbage, a pause ([`AFTER_FAILURE`]) for a late
//!   answer to finish arriving, and a new client (the client's reader stops
//!   for good at an undecodable frame);
//! - the length of the answer checked against the request;
//! - the bytes heard since the request kept (the first [`HEARD_MAX`]), so
//!   that a request that timed out says whether nothing came, garbage, or
//!   the request's own echo; and with `local_echo`, that echo dropped
//!   before the client reads the answer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, rtu};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};

use super::plan::{Request, Table};

/// The pause after a request that timed out or was answered with garbage,
/// before the next: a slave answering late is still sending.
pub const AFTER_FAILURE: Duration = Duration::from_millis(20);

/// How many of the bytes heard after a request are kept for the log.
pub const HEARD_MAX: usize = 64;

/// What a request read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why a request read nothing.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The slave answered, with a Modbus exception.
    #[error("exception {code} ({name})")]
    Exception { code: u8, name: String },
    /// An answer that is not one: a wrong unit id, function or length, or
    /// bytes that are no frame (line noise, an echo, two slaves at once).
    #[error("not an answer to the request: {0}")]
    Garbage(String),
    /// The request came back before any answer: the bus hears the
    /// gateway's own sending.
    #[error(
        "the request came back as an echo ({0}): the transceiver's receiver hears the gateway's own sending; set local_echo = true to drop the echo, or rs485 = true on a UART whose driver switches the direction"
    )]
    Echo(String),
    /// The port failed (the adapter was unplugged): reopen it.
    #[error("{0}")]
    Port(io::Error),
}

impl BusError {
    /// The exception code 2, "illegal data address": the slave has no
    /// such register.
    pub fn is_illegal_address(&self) -> bool {
        matches!(self, BusError::Exception { code: 2, .. })
    }
}

/// The silence a bus keeps between frames: 3.5 characters of
/// `bits_per_char` bits at `baud`, and 1.75 ms above 19200 baud (Modbus
/// over serial line V1.02, 2.5.1.1).
pub fn silence(baud: u32, bits_per_char: u32) -> Duration {
    if baud > 19_200 {
        return Duration::from_micros(1750);
    }
    let micros = (u64::from(bits_per_char) * 3_500_000).div_ceil(u64::from(baud.max(1)));
    Duration::from_micros(micros)
}

/// One bus: its port, and the client over it.
pub struct Bus {
    port: SharedPort,
    client: Option<Context>,
    silence: Duration,
    quiet_until: Instant,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("silence", &self.silence)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A bus on `port`, whose characters are `bits_per_char` bits (start,
    /// data, parity and stop bits) at `baud`.
    pub fn new(port: SerialStream, baud: u32, bits_per_char: u32) -> Bus {
        Bus {
            port: SharedPort(Arc::new(Mutex::new(Port {
                stream: port,
                local_echo: false,
                sent: Vec::new(),
                echoed: Some(0),
                heard: Vec::new(),
                pending: VecDeque::new(),
            }))),
            client: None,
            silence: silence(baud, bits_per_char),
            quiet_until: Instant::now(),
        }
    }

    /// A bus that hears each of its own requests before the answer (a
    /// transceiver whose receiver stays on while the gateway sends): the
    /// echo is checked and dropped.
    pub fn local_echo(self, on: bool) -> Bus {
        self.port.lock().local_echo = on;
        self
    }

    /// Reads `request` from slave `unit`, waiting at most `timeout` for
    /// the answer.
    pub async fn read(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Answer, BusError> {
        sleep_until(self.quiet_until).await;
        self.port
            .lock()
            .start()
            .map_err(|e| BusError::Port(e.into()))?;
        let port = &self.port;
        let client = self
            .client
            .get_or_insert_with(|| rtu::attach_slave(port.clone(), Slave(unit)));
        client.set_slave(Slave(unit));
        let (start, count) = (request.start, request.count);
        let call = async {
            match request.table {
                Table::Coil => nested(client.read_coils(start, count).await, Answer::Bits),
                Table::Discrete => nested(
                    client.read_discrete_inputs(start, count).await,
                    Answer::Bits,
                ),
                Table::Holding => nested(
                    client.read_holding_registers(start, count).await,
                    Answer::Registers,
                ),
                Table::Input => nested(
                    client.read_input_registers(start, count).await,
                    Answer::Registers,
                ),
            }
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(self.port.lock().unanswered(timeout)),
            Ok(result) => result.and_then(|answer| checked(answer, count)),
        };
        self.quiet_until = Instant::now() + self.silence;
        if let Err(
            BusError::Timeout(_) | BusError::Garbage(_) | BusError::Echo(_) | BusError::Port(_),
        ) = result
        {
            self.client = None;
            self.quiet_until += AFTER_FAILURE;
        }
        result
    }
}

/// Waits until `deadline`, to within a tenth of a millisecond: tokio's
/// timers count whole milliseconds and round up, so that a 1.75 ms silence
/// would last about 2.8 ms (measured), a twentieth of a poll's time at
/// 115200 baud. The last few milliseconds are slept on a blocking thread.
async fn sleep_until(deadline: Instant) {
    const COARSE: Duration = Duration::from_millis(2);
    let left = deadline.saturating_duration_since(Instant::now());
    if left > COARSE * 2 {
        tokio::time::sleep_until(deadline - COARSE).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        // A panic in `sleep` is impossible; the wait is over either way.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}

/// The client's two levels of result as one.
fn nested<T>(
    result: tokio_modbus::Result<T>,
    answer: impl FnOnce(T) -> Answer,
) -> Result<Answer, BusError> {
    match result {
        Ok(Ok(values)) => Ok(answer(values)),
        Ok(Err(exception)) => Err(BusError::Exception {
            code: u8::from(exception),
            name: exception.to_string(),
        }),
        Err(tokio_modbus::Error::Protocol(e)) => Err(BusError::Garbage(e.to_string())),
        // A frame the codec cannot read (bad CRC after its retries, an
        // impossible length) is garbage; other errors are the port's.
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(BusError::Garbage(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(BusError::Port(e)),
    }
}

/// The answer, if it holds exactly the `count` values asked for (the
/// client checks this only in debug builds).
fn checked(answer: Answer, count: u16) -> Result<Answer, BusError> {
    let len = match &answer {
        Answer::Registers(r) => r.len(),
        // Bits come in whole bytes: up to 7 more than asked.
        Answer::Bits(b) => b.len().min(usize::from(count)),
    };
    if len == usize::from(count) {
        Ok(match answer {
            Answer::Bits(mut b) => {
                b.truncate(usize::from(count));
                Answer::Bits(b)
            }
            registers => registers,
        })
    } else {
        Err(BusError::Garbage(format!("{len} values for {count} asked")))
    }
}

/// The port and what went over it since the request began.
struct Port {
    stream: SerialStream,
    local_echo: bool,
    /// The request, as written.
    sent: Vec<u8>,
    /// With `local_echo`: how much of `sent` has come back; `None` once
    /// the echo is over (or turned out not to be one).
    echoed: Option<usize>,
    /// The first [`HEARD_MAX`] bytes heard since the request.
    heard: Vec<u8>,
    /// Bytes heard and not yet read by the client.
    pending: VecDeque<u8>,
}

impl Port {
    /// A new request begins: the tty's input discarded, nothing sent or
    /// heard yet.
    fn start(&mut self) -> Result<(), tokio_serial::Error> {
        self.stream.clear(ClearBuffer::Input)?;
        self.sent.clear();
        self.heard.clear();
        self.pending.clear();
        self.echoed = Some(0);
        Ok(())
    }

    /// Takes in bytes from the wire: kept for the log, and for the client
    /// unless they are the request's echo.
    fn hear(&mut self, bytes: &[u8]) {
        let room = HEARD_MAX.saturating_sub(self.heard.len());
        self.heard.extend(bytes.iter().take(room));
        for &b in bytes {
            if let (true, Some(n)) = (self.local_echo, self.echoed) {
                if self.sent.get(n) == Some(&b) {
                    self.echoed = (n + 1 < self.sent.len()).then_some(n + 1);
                    continue;
                }
                // Not the echo after all: what was held back is the answer's.
                self.pending.extend(&self.sent[..n]);
                self.echoed = None;
            }
            self.pending.push_back(b);
        }
    }

    /// Why a request that timed out went unanswered, from what was heard.
    fn unanswered(&self, timeout: Duration) -> BusError {
        let heard = &self.heard;
        let echo_only = self.local_echo && heard.len() <= self.sent.len();
        if heard.is_empty() || (echo_only && self.sent.starts_with(heard)) {
            BusError::Timeout(timeout)
        } else if !self.local_echo && !self.sent.is_empty() && heard.starts_with(&self.sent) {
            BusError::Echo(hex(heard))
        } else {
            BusError::Garbage(format!(
                "no answer within {} ms, but bytes that are none: {}",
                timeout.as_millis(),
                hex(heard)
            ))
        }
    }
}

/// Bytes in hex, with "..." when [`HEARD_MAX`] cut them short.
fn hex(bytes: &[u8]) -> String {
    let mut out: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if bytes.len() >= HEARD_MAX {
        out.push("...".into());
    }
    out.join(" ")
}

/// The port, shared by the bus (to start each request) and the client (to
/// send and receive). Locked only within a poll, never across an await.
#[derive(Clone)]
struct SharedPort(Arc<Mutex<Port>>);

impl SharedPort {
    fn lock(&self) -> MutexGuard<'_, Port> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut port = self.lock();
        loop {
            if !port.pending.is_empty() {
                let n = buf.remaining().min(port.pending.len());
                let (a, b) = port.pending.as_slices();
                let from_a = n.min(a.len());
                buf.put_slice(&a[..from_a]);
                buf.put_slice(&b[..n - from_a]);
                port.pending.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut bytes = [0u8; 256];
            let mut read = ReadBuf::new(&mut bytes);
            ready!(Pin::new(&mut port.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            let filled = read.filled().len();
            port.hear(&bytes[..filled]);
        }
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut port = self.lock();
        let n = ready!(Pin::new(&mut port.stream).poll_write(cx, buf))?;
        port.sent.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_is_three_and_a_half_characters_and_1750_us_above_19200_baud() {
        // 8E1: 11 bits a character; 3.5 of them at 9600 baud.
        assert_eq!(silence(9600, 11), Duration::from_micros(4011));
        assert_eq!(silence(19_200, 10), Duration::from_micros(1823));
        assert_eq!(silence(115_200, 11), Duration::from_micros(1750));
    }

    #[test]
    fn answers_hold_what_was_asked() {
        let regs = Answer::Registers(vec![1, 2]);
        assert_eq!(checked(regs.clone(), 2).unwrap(), regs);
        assert!(matches!(checked(regs, 3), Err(BusError::Garbage(_))));
        // 3 coils arrive as a byte of 8 bits.
        let bits = Answer::Bits(vec![true, false, true, false, false, false, false, false]);
        assert_eq!(
            checked(bits.clone(), 3).unwrap(),
            Answer::Bits(vec![true, false, true])
        );
        assert!(matches!(checked(bits, 9), Err(BusError::Garbage(_))));
    }
}
