//! Pseudo-terminals that stand in for serial devices, and a simulated sensor
//! that writes to them.
//!
//! The gateway opens a serial device by path with tokio-serial, so the demo
//! and the integration tests need a real tty with a path: the slave side of
//! a PTY pair (`/dev/pts/N`). Whatever is written to the master arrives on
//! the slave as if a sensor had sent it over a UART.
//!
//! # What the gateway's open does to a PTY (serialport 4.10, Linux)
//!
//! Read from `serialport/src/posix/tty.rs` and checked by the tests below:
//!
//! * Opening the port does **not** flush pending input on Linux: the
//!   `tcflush(TCIOFLUSH)` in `TTYPort::open` is compiled for macOS/iOS only,
//!   and the settings are applied with `tcsetattr(TCSANOW)` and `TCSETS2`,
//!   neither of which discards queued bytes. So lines written before the
//!   gateway opened the slave, or while it had the slave closed, are read
//!   after the (re)open, in order, without loss, as long as the [`Pty`] is
//!   alive. The terminal holds only about 20 KiB with nobody reading
//!   (measured on Linux 6.18: the line discipline's 4 KiB plus the pty's
//!   buffer); beyond that a write to the master blocks (the simulated sensor
//!   waits) rather than dropping bytes, and resumes once the gateway reads.
//! * Nothing else is needed for a PTY: serialport sets raw mode itself
//!   (`cfmakeraw`), and setting the baud rate on a PTY is accepted and
//!   ignored. The slave is still put into raw mode here at creation, because
//!   the line discipline processes bytes when they *arrive*, not when they
//!   are read: with the default cooked mode, lines written before the
//!   gateway opened the port would be echoed and have CR turned into NL.
//! * serialport opens ports exclusively by default (`TIOCEXCL` plus an
//!   exclusive `flock`) and clears `TIOCEXCL` again when the port is dropped.
//!   A gateway killed with SIGKILL cannot clear it, so a *non-root* gateway
//!   restarted on the same [`Pty`] gets EBUSY (root bypasses `TIOCEXCL`).
//!   The [`Pty`]'s own slave descriptor is opened before any of this and is
//!   not affected.
//! * The [`Pty`] keeps its own slave descriptor open, so the gateway's
//!   close is never the terminal's last close and the master never sees a
//!   hang-up. (Measured on Linux 6.18 without it: queued bytes and raw mode
//!   still survived a close and reopen, but reads on the master failed with
//!   EIO; holding the slave keeps the terminal in one plain state.)

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::ttyname;

/// A pseudo-terminal pair whose slave path plays the serial device.
///
/// Both ends stay open for the lifetime of the value; drop it only once the
/// gateway is done with the device.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    // Held, never read: keeps the tty (and the bytes queued in it) alive
    // while the gateway closes and reopens the device.
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Opens a new PTY pair with the slave in raw mode, so bytes written to
    /// the master reach the reader of the slave unchanged.
    pub fn open() -> io::Result<Pty> {
        let OpenptyResult { master, slave } = openpty(None::<&Winsize>, None::<&Termios>)?;
        // glibc's openpty does not set close-on-exec: without it, every
        // process the test spawns (mosquitto, the gateway binary) would
        // inherit both ends and keep the terminal alive after we drop it.
        for fd in [&master, &slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let mut termios = tcgetattr(&slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        let path = ttyname(&slave)?;
        Ok(Pty {
            master,
            _slave: slave,
            path,
        })
    }

    /// The slave's path (for example `/dev/pts/7`): what goes into a
    /// sensor's `device` setting.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new handle on the master for writing what the "sensor" sends.
    /// Writes block while the terminal's buffers are full (nobody reading).
    pub fn writer(&self) -> io::Result<File> {
        Ok(File::from(self.master.try_clone()?))
    }
}

/// Decodes [`sim_line`] output the way the gateway does, to compare what a
/// consumer received with what was written.
pub fn sim_decoder() -> crate::serial::format::csv::CsvDecoder {
    let columns: Vec<crate::config::Column> = sim_columns()
        .iter()
        .map(|c| crate::config::Column::auto(c))
        .collect();
    crate::serial::format::csv::CsvDecoder::new(&columns, ',')
}

/// The column names of the simulated sensor's CSV lines, in order: a smart
/// exercise bike, like the seed project's.
pub fn sim_columns() -> Vec<String> {
    [
        "speed",
        "cadence",
        "heart_rate",
        "incline",
        "resistance",
        "power",
    ]
    .map(String::from)
    .to_vec()
}

/// The CSV line the simulated sensor sends as its `i`-th record, without the
/// newline. Deterministic, so a test can check every record that arrives
/// against what was sent.
///
/// Columns as in [`sim_columns`]: speed (float, two decimals, km/h), cadence
/// (int, rpm), heart_rate (int, bpm), incline (float, one decimal, may be
/// negative, %), resistance (int, level), power (int, W).
pub fn sim_line(i: u64) -> String {
    let speed_centi = 1500 + (i * 37) % 2000; // 15.00 ..= 34.99
    let cadence = 60 + (i * 7) % 61; // 60 ..= 120
    let heart_rate = 90 + (i * 11) % 91; // 90 ..= 180
    let incline_tenths = -50 + ((i * 13) % 151) as i64; // -5.0 ..= 10.0
    let resistance = 1 + (i * 3) % 20; // 1 ..= 20
    let power = 50 + (i * 29) % 351; // 50 ..= 400
    let sign = if incline_tenths < 0 { "-" } else { "" };
    let incline = incline_tenths.unsigned_abs();
    format!(
        "{}.{:02},{cadence},{heart_rate},{sign}{}.{},{resistance},{power}",
        speed_centi / 100,
        speed_centi % 100,
        incline / 10,
        incline % 10,
    )
}

/// A simulated sensor writing [`sim_line`]s to a PTY master.
pub struct SimSensor;

impl SimSensor {
    /// Writes `sim_line(i)` plus `"\n"` for `i` in `0..count` on a new
    /// thread and returns the number of lines written.
    ///
    /// With `rate` (lines per second, finite and positive) line `i` is
    /// written at `start + i / rate`, so pacing does not drift however long
    /// each write takes; without it, lines go out as fast as the terminal
    /// takes them. Each line is one `write_all`, so a reader never waits for
    /// half a line that sits in a user-space buffer.
    ///
    /// The thread blocks while nobody drains the slave: join it only once a
    /// reader has consumed the lines (or drop the handle).
    pub fn spawn(writer: File, count: u64, rate: Option<f64>) -> JoinHandle<io::Result<u64>> {
        SimSensor::spawn_from(writer, 0, count, rate)
    }

    /// Like [`SimSensor::spawn`], writing lines `first..first + count`.
    pub fn spawn_from(
        mut writer: File,
        first: u64,
        count: u64,
        rate: Option<f64>,
    ) -> JoinHandle<io::Result<u64>> {
        thread::Builder::new()
            .name("sim-sensor".into())
            .spawn(move || {
                let period = match rate {
                    None => None,
                    Some(r) if r.is_finite() && r > 0.0 => Some(Duration::from_secs_f64(1.0 / r)),
                    Some(r) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("simulated sensor rate {r} is not a positive number of lines per second"),
                        ));
                    }
                };
                let start = Instant::now();
                for i in 0..count {
                    if let Some(period) = period {
                        let due = start + period.mul_f64(i as f64);
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    }
                    let mut line = sim_line(first + i);
                    line.push('\n');
                    writer.write_all(line.as_bytes())?;
                }
                writer.flush()?;
                Ok(count)
            })
            .expect("spawning a thread only fails when the process is out of resources")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_serial::SerialPortBuilderExt;

    fn expected(range: std::ops::Range<u64>) -> Vec<u8> {
        range
            .flat_map(|i| {
                let mut l = sim_line(i).into_bytes();
                l.push(b'\n');
                l
            })
            .collect()
    }

    fn open_port(pty: &Pty) -> tokio_serial::SerialStream {
        let path = pty.path().to_str().expect("pts paths are UTF-8");
        tokio_serial::new(path, 115_200)
            .open_native_async()
            .expect("open the PTY slave as a serial port")
    }

    /// Reads exactly `n` bytes, failing after 10 s.
    async fn read_n(port: &mut tokio_serial::SerialStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(10), port.read_exact(&mut buf))
            .await
            .expect("bytes arrive within 10 s")
            .expect("read from the serial port");
        buf
    }

    /// Asserts that nothing more arrives within 200 ms.
    async fn assert_quiet(port: &mut tokio_serial::SerialStream) {
        let mut byte = [0u8; 1];
        let more = tokio::time::timeout(Duration::from_millis(200), port.read(&mut byte)).await;
        assert!(more.is_err(), "unexpected extra bytes: {more:?} {byte:?}");
    }

    #[test]
    fn sim_lines_are_deterministic_and_match_the_columns() {
        assert_eq!(sim_line(0), "15.00,60,90,-5.0,1,50");
        assert_eq!(sim_line(1), "15.37,67,101,-3.7,4,79");
        assert_eq!(sim_line(12345), sim_line(12345));
        for i in 0..5000 {
            let line = sim_line(i);
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), sim_columns().len(), "{line}");
            for (n, f) in fields.iter().enumerate() {
                let is_float = matches!(n, 0 | 3);
                assert_eq!(f.contains('.'), is_float, "{line}");
                assert!(f.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn slave_path_is_a_pts_and_writer_is_a_dup() {
        let pty = Pty::open().unwrap();
        assert!(pty.path().starts_with("/dev/pts"), "{:?}", pty.path());
        assert!(pty.path().exists());
        pty.writer().unwrap().write_all(b"x").unwrap();
    }

    #[test]
    fn invalid_rate_is_an_error_not_a_hang() {
        let pty = Pty::open().unwrap();
        let err = SimSensor::spawn(pty.writer().unwrap(), 1, Some(0.0))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn thousand_lines_pass_through_tokio_serial_byte_exact() {
        let pty = Pty::open().unwrap();
        let mut port = open_port(&pty);
        let sim = SimSensor::spawn(pty.writer().unwrap(), 1000, None);
        let want = expected(0..1000);
        assert_eq!(read_n(&mut port, want.len()).await, want);
        assert_eq!(sim.join().unwrap().unwrap(), 1000);
        assert_quiet(&mut port).await;
    }

    #[tokio::test]
    async fn lines_written_before_the_port_is_opened_are_not_lost() {
        let pty = Pty::open().unwrap();
        // 500 lines (~11 KiB) with nobody reading: more than the line
        // discipline's 4 KiB, less than the ~20 KiB the terminal holds.
        let sim = SimSensor::spawn(pty.writer().unwrap(), 500, None);
        assert_eq!(sim.join().unwrap().unwrap(), 500);
        let mut port = open_port(&pty);
        let want = expected(0..500);
        assert_eq!(read_n(&mut port, want.len()).await, want);
        assert_quiet(&mut port).await;
    }

    #[tokio::test]
    async fn lines_written_while_the_port_is_closed_arrive_after_reopening() {
        let pty = Pty::open().unwrap();
        let mut writer = pty.writer().unwrap();
        let mut port = open_port(&pty);
        writer.write_all(&expected(0..10)).unwrap();
        assert_eq!(
            read_n(&mut port, expected(0..10).len()).await,
            expected(0..10)
        );
        drop(port);
        writer.write_all(&expected(10..500)).unwrap();
        let mut port = open_port(&pty);
        let want = expected(10..500);
        assert_eq!(read_n(&mut port, want.len()).await, want);
        assert_quiet(&mut port).await;
    }

    #[tokio::test]
    async fn a_sensor_blocked_on_a_full_terminal_resumes_without_loss_when_read() {
        // 3000 lines (~66 KiB) with nobody reading: the writer blocks once
        // the terminal is full, then everything arrives after the open.
        let pty = Pty::open().unwrap();
        let sim = SimSensor::spawn(pty.writer().unwrap(), 3000, None);
        thread::sleep(Duration::from_millis(200));
        assert!(!sim.is_finished(), "the terminal held 66 KiB unread?");
        let mut port = open_port(&pty);
        let want = expected(0..3000);
        assert_eq!(read_n(&mut port, want.len()).await, want);
        assert_eq!(sim.join().unwrap().unwrap(), 3000);
    }

    #[tokio::test]
    async fn paced_sensor_keeps_its_rate() {
        let pty = Pty::open().unwrap();
        let mut port = open_port(&pty);
        let started = Instant::now();
        let sim = SimSensor::spawn(pty.writer().unwrap(), 21, Some(100.0));
        let want = expected(0..21);
        assert_eq!(read_n(&mut port, want.len()).await, want);
        sim.join().unwrap().unwrap();
        let took = started.elapsed();
        // 20 periods of 10 ms: not faster, and not wildly slower.
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
