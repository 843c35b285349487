//! Waiting on a channel by spinning a little before sleeping.
//!
//! A request crosses two threads in the host (the feeder, then the model
//! thread), and a thread asleep in the kernel takes a while to wake. One
//! that polls its channel for a short while first is still running when
//! the message comes: at one client on an H200, `--spin-us 1000` took the
//! host's queue time from 0.19-0.30 to 0.13-0.20 ms, for about one more
//! core busy (docs/benchmarks.md); the clients' p50 and the images/s at 32
//! clients and at the CPU-bound JPEG peak did not move out of the
//! machine's run-to-run spread, so it is off by default. The
//! spin is bounded, so an idle host sleeps; and it is off on a CPU-only
//! host, where a spinning thread would take a core from the forward pass.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// Waits up to `timeout` for a message, polling for the first `spin` of
/// it (at most the whole timeout) and sleeping on the channel after.
pub fn recv_timeout<T>(rx: &Receiver<T>, timeout: Duration, spin: Duration) -> Result<T, RecvTimeoutError> {
    let started = Instant::now();
    let spin = spin.min(timeout);
    if !spin.is_zero() {
        loop {
            match rx.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) if started.elapsed() >= spin => break,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    rx.recv_timeout(timeout.saturating_sub(started.elapsed()))
}

/// Waits for a message with no time limit, polling for the first `spin`.
/// None once every sender is gone.
pub fn recv<T>(rx: &Receiver<T>, spin: Duration) -> Option<T> {
    if spin.is_zero() {
        return rx.recv().ok();
    }
    match recv_timeout(rx, spin, spin) {
        Ok(message) => Some(message),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => rx.recv().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, sync_channel};

    use super::*;

    #[test]
    fn a_message_already_there_is_taken_at_once_spinning_or_not() {
        for spin in [Duration::ZERO, Duration::from_millis(50)] {
            let (tx, rx) = channel();
            tx.send(7).unwrap();
            assert_eq!(recv_timeout(&rx, Duration::from_secs(5), spin), Ok(7));
            tx.send(8).unwrap();
            assert_eq!(recv(&rx, spin), Some(8));
        }
    }

    #[test]
    fn a_message_sent_while_spinning_or_after_is_received() {
        // Spinning 1 ms, the message comes later (while asleep) or at once.
        for spin in [Duration::from_millis(1), Duration::from_secs(10)] {
            let (tx, rx) = sync_channel(1);
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(1u8).unwrap();
            });
            assert_eq!(recv(&rx, spin), Some(1));
            sender.join().unwrap();
        }
    }

    #[test]
    fn the_timeout_covers_the_spin() {
        let (_tx, rx) = channel::<u8>();
        let started = Instant::now();
        // The spin asked for is longer than the wait: the wait wins.
        assert_eq!(recv_timeout(&rx, Duration::from_millis(5), Duration::from_secs(10)), Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
        let started = Instant::now();
        assert_eq!(recv_timeout(&rx, Duration::from_millis(20), Duration::from_millis(2)), Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_closed_channel_ends_the_wait_during_the_spin() {
        let (tx, rx) = channel::<u8>();
        drop(tx);
        let started = Instant::now();
        assert_eq!(recv_timeout(&rx, Duration::from_secs(10), Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
        assert_eq!(recv(&rx, Duration::from_secs(10)), None);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
