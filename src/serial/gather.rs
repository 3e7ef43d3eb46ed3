//! Fewer, fuller reads from a serial device.
//!
//! A reader that keeps up with its device wakes for every few bytes the
//! UART (or the USB adapter) hands the kernel: a Pi's PL011 raises an
//! interrupt every 16 bytes or so, thousands of wake-ups a second at
//! 921600 baud, each costing more than the bytes it reads. After a short
//! read, [`Gather`] lets the next one wait a little (at most [`MAX_PAUSE`],
//! and never longer than the device takes to send [`SHORT`] bytes), so the
//! kernel's buffer gathers the bytes in between and one wake-up reads them
//! all. A full read is followed at once by the next: a device faster than
//! the reader is never held back. The pause adds at most that much to a
//! record's latency, well inside a batch's `linger`; the kernel's line
//! buffer (4 KiB, 44 ms at 921600 baud) holds far more than a pause.
//! Measured in docs/BENCHMARKS.md ("Pi resources").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A read of fewer bytes than this is short: the next one waits.
pub const SHORT: usize = 1024;
/// The longest wait after a short read.
pub const MAX_PAUSE: Duration = Duration::from_millis(2);

/// How long to wait after a short read at `baud`: the time the device
/// takes to send [`SHORT`] bytes (10 bits a byte), at most [`MAX_PAUSE`].
pub fn pause_for(baud: u32) -> Duration {
    let bits = SHORT as u64 * 10;
    let micros = bits * 1_000_000 / u64::from(baud.max(1));
    Duration::from_micros(micros).min(MAX_PAUSE)
}

/// A reader that waits `pause` after each short read.
#[derive(Debug)]
pub struct Gather<R> {
    inner: R,
    pause: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
}

impl<R> Gather<R> {
    pub fn new(inner: R, pause: Duration) -> Gather<R> {
        Gather {
            inner,
            pause,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
        }
    }

    /// The device itself, read without pauses (a stop reading the rest of
    /// a frame byte by byte).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Gather<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.waiting {
            ready!(this.sleep.as_mut().poll(cx));
            this.waiting = false;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 && n < SHORT && !this.pause.is_zero() {
            this.sleep.as_mut().reset(Instant::now() + this.pause);
            this.waiting = true;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_pause_is_the_time_of_a_short_read_at_most_max_pause() {
        assert_eq!(pause_for(9600), MAX_PAUSE);
        assert_eq!(pause_for(921_600), MAX_PAUSE);
        // 10,240 bits at 12 Mbit/s (a USB adapter's top rate).
        assert_eq!(pause_for(12_000_000), Duration::from_micros(853));
        assert_eq!(pause_for(0), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_read_makes_the_next_wait_and_gathers_what_came_meanwhile() {
        let (mut device, port) = tokio::io::duplex(64 * 1024);
        let mut port = Gather::new(port, Duration::from_millis(2));
        let mut buf = vec![0u8; 8192];
        device.write_all(b"first").await.unwrap();
        assert_eq!(port.read(&mut buf).await.unwrap(), 5);
        device.write_all(b"second,").await.unwrap();
        device.write_all(b"third").await.unwrap();
        let t = Instant::now();
        // Both writes in one read, after the pause.
        assert_eq!(port.read(&mut buf).await.unwrap(), 12);
        assert_eq!(&buf[..12], b"second,third");
        assert_eq!(t.elapsed(), Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_read_is_followed_at_once() {
        let (mut device, port) = tokio::io::duplex(64 * 1024);
        let mut port = Gather::new(port, Duration::from_millis(2));
        let mut buf = vec![0u8; SHORT];
        device.write_all(&[7u8; 3 * SHORT]).await.unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(port.read(&mut buf).await.unwrap(), SHORT);
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
        // The device itself is read without the pause.
        device.write_all(b"ab").await.unwrap();
        let mut one = [0u8; 1];
        assert_eq!(port.get_mut().read(&mut one).await.unwrap(), 1);
        assert_eq!(port.get_mut().read(&mut one).await.unwrap(), 1);
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_file_and_a_zero_pause_do_not_wait() {
        let (device, port) = tokio::io::duplex(1024);
        drop(device);
        let mut port = Gather::new(port, Duration::from_millis(2));
        let mut buf = [0u8; 16];
        assert_eq!(port.read(&mut buf).await.unwrap(), 0);
        let (mut device, port) = tokio::io::duplex(1024);
        let mut port = Gather::new(port, Duration::ZERO);
        let t = Instant::now();
        for _ in 0..3 {
            device.write_all(b"x").await.unwrap();
            assert_eq!(port.read(&mut buf).await.unwrap(), 1);
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
