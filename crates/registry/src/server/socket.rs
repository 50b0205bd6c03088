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

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Bytes queued on the socket before a body-reading request is woken.
pub(crate) const BODY_LOW_WATER: u64 = 256 << 10;

/// A duplicate of a plain-TCP connection's socket, attached to each of its requests.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSocket(Arc<OwnedFd>);

impl ConnectionSocket {
    /// Duplicates `stream`'s descriptor (`None` when the process is out of descriptors).
    pub(crate) fn new(stream: &tokio::net::TcpStream) -> Option<Self> {
        stream
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| ConnectionSocket(Arc::new(fd)))
    }

    fn set_recv_low_water(&self, bytes: u64) -> bool {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor is open for as long as `self.0` lives; the option value is a
        // `c_int` on this stack frame and its exact size is passed, as SO_RCVLOWAT expects.
        let rc = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
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
