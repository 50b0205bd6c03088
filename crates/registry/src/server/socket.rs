//! The receive low-water mark (`SO_RCVLOWAT`) of a client's connection. A client uploading a
//! blob usually sends slower than the server stores it, so a server that reads whatever has
//! arrived wakes once per TCP segment (tens of KiB): thousands of wake-ups, context switches and
//! `recv` calls per 100 MB. While a request body of known length streams in, the socket's
//! low-water mark is raised so that the kernel wakes the server only once [`BODY_LOW_WATER`]
//! bytes are queued, never more than the body still owes (so the last bytes are never held
//! back), and lowered to one byte again when the body ends. The kernel grows the receive buffer
//! to match, so throughput does not suffer; a connection the peer closes still wakes the reader.
//!
//! Only plain-TCP HTTP/1 connections get this: with TLS or HTTP/2 the bytes on the socket are
//! not the body's bytes.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Bytes queued on the socket before a body-reading request is woken.
pub(crate) const BODY_LOW_WATER: u64 = 256 << 10;

/// A plain-TCP connection's socket, attached to each of its requests. It holds the descriptor's
/// number, not a duplicate (a connection costs one descriptor, not two): the connection's
/// transport calls [`ConnectionSocket::closing`] before it closes the socket, under the same
/// lock that every use of the number takes, so the number is never used once it may name
/// another file.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSocket(Arc<Mutex<Option<RawFd>>>);

impl ConnectionSocket {
    /// A handle on `fd`, which must stay open until [`ConnectionSocket::closing`] is called.
    pub(crate) fn new(fd: RawFd) -> Self {
        ConnectionSocket(Arc::new(Mutex::new(Some(fd))))
    }

    /// Forgets the descriptor: called by its owner right before it closes it.
    pub(crate) fn closing(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Bytes received and not yet read (`FIONREAD`), `None` once the socket is closing.
    pub(crate) fn queued(&self) -> Option<u64> {
        let fd = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fd = (*fd)?;
        let mut queued: libc::c_int = 0;
        // SAFETY: `fd` is open while the lock is held (see `set_recv_low_water`); FIONREAD
        // writes one `c_int` into the variable it is given.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut queued) };
        (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
    }

    fn set_recv_low_water(&self, bytes: u64) -> bool {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let fd = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = *fd else {
            return false;
        };
        // SAFETY: `fd` is open while the lock is held and the number is still recorded (the
        // owner clears it under this lock before closing); the option value is a `c_int` on
        // this stack frame and its exact size is passed, as SO_RCVLOWAT expects.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }
}

/// A request body of known length that keeps its socket's low-water mark at
/// `min(BODY_LOW_WATER, bytes still owed)` while it is read, and resets it when done or dropped.
pub(crate) struct LowWaterBody<S> {
    inner: S,
    socket: ConnectionSocket,
    /// Body bytes not yet received.
    remaining: u64,
    /// The low-water mark last set (1 is the kernel's default).
    current: u64,
}

impl<S> LowWaterBody<S> {
    pub(crate) fn new(inner: S, socket: ConnectionSocket, length: u64) -> Self {
        LowWaterBody {
            inner,
            socket,
            remaining: length,
            current: 1,
        }
    }

    fn set_low_water(&mut self, bytes: u64) {
        if bytes != self.current {
            // On failure the mark stays where it was; only wake-ups are lost, never data.
            if self.socket.set_recv_low_water(bytes) {
                self.current = bytes;
            }
        }
    }
}

impl<S> Stream for LowWaterBody<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let want = self.remaining.clamp(1, BODY_LOW_WATER);
        self.set_low_water(want);
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                if self.remaining == 0 {
                    self.set_low_water(1);
                }
            }
            Poll::Ready(_) => self.set_low_water(1),
            Poll::Pending => {}
        }
        polled
    }
}

impl<S> Drop for LowWaterBody<S> {
    fn drop(&mut self) {
        self.set_low_water(1);
    }
}
