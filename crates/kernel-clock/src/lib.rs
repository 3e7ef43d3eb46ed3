//! The kernel's view of the system clock: whether an NTP client (chrony,
//! ntpd, systemd-timesyncd) has told it the clock is synchronised.
//!
//! `adjtimex(2)` with `modes = 0` only reads. The kernel reports the clock
//! unsynchronised (state `TIME_ERROR`, status bit `STA_UNSYNC`) from boot
//! until a time daemon disciplines it, and again when the daemon has not
//! done so for long enough that the error bound passes 16 s.

#![deny(unsafe_op_in_unsafe_fn)]

use std::io;

/// What `adjtimex` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// The clock state, `TIME_OK` (0) to `TIME_ERROR` (5).
    pub state: i32,
    /// The `STA_*` status bits.
    pub status: i32,
}

impl KernelClock {
    /// Synchronised: neither `TIME_ERROR` nor `STA_UNSYNC`.
    pub fn synchronised(&self) -> bool {
        self.state != libc::TIME_ERROR && self.status & libc::STA_UNSYNC == 0
    }
}

/// Reads the kernel's clock state (no change made; needs no privilege).
pub fn read() -> io::Result<KernelClock> {
    // SAFETY: `timex` holds only integers (and a `timeval` of integers), so
    // all zeroes is a valid value; `modes = 0` asks the kernel to change
    // nothing. The pointer is to a live, exclusively borrowed value for the
    // whole call, which is all adjtimex writes to.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelClock {
        state,
        status: tx.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_answers_and_state_and_status_agree_on_an_error() {
        let clock = read().expect("adjtimex(modes = 0) needs no privilege");
        assert!((0..=5).contains(&clock.state), "{clock:?}");
        if clock.state == libc::TIME_ERROR {
            assert!(!clock.synchronised());
        }
    }

    #[test]
    fn unsync_bit_or_error_state_means_not_synchronised() {
        let ok = KernelClock {
            state: 0,
            status: 0x2001,
        };
        assert!(ok.synchronised());
        assert!(
            !KernelClock {
                status: ok.status | libc::STA_UNSYNC,
                ..ok
            }
            .synchronised()
        );
        assert!(
            !KernelClock {
                state: libc::TIME_ERROR,
                ..ok
            }
            .synchronised()
        );
    }
}
