//! Port forwarding over SPDY/3.1, the way the kubelet serves `kubectl port-forward`.
//!
//! kubectl 1.32 first asks for a WebSocket with the `SPDY/3.1+portforward.k8s.io` subprotocol
//! (SPDY frames tunnelled in binary messages) and falls back to a plain `Upgrade: SPDY/3.1`
//! connection; both carry the same session, served here by [`serve`] over any byte stream.
//! For each forwarded connection the client opens two streams with the headers `streamType`
//! (`error` or `data`), `port` and `requestID`; the server replies to each, connects to the
//! port inside the pod's network namespace once the data stream is there, and copies bytes
//! both ways (an error goes on the error stream as text).
//!
//! Only what that protocol needs is implemented: SYN_STREAM/SYN_REPLY with zlib-compressed
//! header blocks (the SPDY/3 dictionary), DATA with FIN, RST_STREAM, PING, GOAWAY, and
//! WINDOW_UPDATE for what was received (the peer, moby/spdystream, does not limit what it
//! sends otherwise; incoming window updates are ignored).

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The subprotocol of SPDY tunnelled over WebSocket (kubectl's first try).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The port-forward protocol named in `X-Stream-Protocol-Version`.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 1;

/// The SPDY/3 header compression dictionary: length-prefixed header names and values, then
/// common status texts, dates and media types (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One direction's header compression state (a zlib stream per connection and direction).
struct Headers {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    dictionary: Vec<u8>,
}

impl Headers {
    fn new() -> Headers {
        let dictionary = dictionary();
        let mut deflate = flate2::Compress::new(flate2::Compression::default(), true);
        let _ = deflate.set_dictionary(&dictionary);
        Headers {
            inflate: flate2::Decompress::new(true),
            deflate,
            dictionary,
        }
    }

    /// Inflates one header block into name/value pairs (names lowercase, as SPDY sends them).
    fn decode(&mut self, mut input: &[u8]) -> Result<HashMap<String, String>, String> {
        let mut out = Vec::with_capacity(256);
        let mut buf = [0u8; 4096];
        while !input.is_empty() {
            let before = (self.inflate.total_in(), self.inflate.total_out());
            match self
                .inflate
                .decompress(input, &mut buf, flate2::FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| format!("header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("inflating headers: {e}")),
            }
            let used = (self.inflate.total_in() - before.0) as usize;
            let made = (self.inflate.total_out() - before.1) as usize;
            out.extend_from_slice(&buf[..made]);
            input = &input[used..];
            if used == 0 && made == 0 {
                break;
            }
            if input.is_empty() && made == buf.len() {
                // More output may be pending: go round once more with no input.
                input = &[];
                let before = self.inflate.total_out();
                let _ = self
                    .inflate
                    .decompress(&[], &mut buf, flate2::FlushDecompress::Sync);
                let made = (self.inflate.total_out() - before) as usize;
                out.extend_from_slice(&buf[..made]);
            }
        }
        parse_block(&out)
    }

    /// Deflates a header block (sync-flushed, so the peer can read it at once).
    fn encode(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (k, v) in pairs {
            block.extend_from_slice(&(k.len() as u32).to_be_bytes());
            block.extend_from_slice(k.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = &block[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, flate2::FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn parse_block(b: &[u8]) -> Result<HashMap<String, String>, String> {
    let bad = || "a malformed header block".to_owned();
    let u32_at = |i: usize| -> Result<usize, String> {
        Ok(u32::from_be_bytes(
            b.get(i..i + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize)
    };
    let n = u32_at(0)?;
    let mut i = 4;
    let mut out = HashMap::new();
    for _ in 0..n {
        let len = u32_at(i)?;
        let name = b.get(i + 4..i + 4 + len).ok_or_else(bad)?;
        i += 4 + len;
        let len = u32_at(i)?;
        let value = b.get(i + 4..i + 4 + len).ok_or_else(bad)?;
        i += 4 + len;
        out.insert(
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            // Several values are NUL-separated: the first is enough here.
            String::from_utf8_lossy(value.split(|c| *c == 0).next().unwrap_or_default())
                .into_owned(),
        );
    }
    Ok(out)
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A forwarded connection: its error and data streams and, once connected, the socket's
/// writing half.
#[derive(Default)]
struct Forward {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    to_pod: Option<mpsc::Sender<Option<Vec<u8>>>>,
}

/// Serves one port-forward session on `io` for the pod whose sandbox is `pid`, until the
/// client goes away.
pub async fn serve<IO>(io: IO, pid: i32)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            let _ = writer.flush().await;
        }
        let _ = writer.shutdown().await;
    });
    let mut headers = Headers::new();
    let mut forwards: HashMap<String, Forward> = HashMap::new();
    let mut stream_request: HashMap<u32, String> = HashMap::new();
    let mut head = [0u8; 8];
    loop {
        if let Err(e) = reader.read_exact(&mut head).await {
            tracing::debug!(error = %e, "port-forward session ends");
            break;
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let flags = head[4];
        if len > 16 << 20 {
            break;
        }
        let mut payload = vec![0u8; len];
        if reader.read_exact(&mut payload).await.is_err() {
            break;
        }
        if head[0] & 0x80 == 0 {
            // A DATA frame: bytes for the pod (only data streams carry any).
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if !payload.is_empty() {
                let mut w = Vec::with_capacity(8);
                w.extend_from_slice(&stream.to_be_bytes());
                w.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                let _ = out_tx.send(control(WINDOW_UPDATE, 0, &w)).await;
                let mut session = Vec::with_capacity(8);
                session.extend_from_slice(&0u32.to_be_bytes());
                session.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                let _ = out_tx.send(control(WINDOW_UPDATE, 0, &session)).await;
            }
            let Some(f) = stream_request.get(&stream).and_then(|r| forwards.get(r)) else {
                continue;
            };
            if f.data == Some(stream)
                && let Some(tx) = &f.to_pod
            {
                if !payload.is_empty() {
                    let _ = tx.send(Some(payload)).await;
                }
                if flags & FLAG_FIN != 0 {
                    let _ = tx.send(None).await;
                }
            }
            continue;
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        match kind {
            SYN_STREAM if payload.len() >= 10 => {
                let stream = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                let h = match headers.decode(&payload[10..]) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "port-forward: bad SYN_STREAM");
                        break;
                    }
                };
                // Every stream gets its reply at once, as the kubelet's handler does.
                let reply = headers.encode(&[]);
                let mut p = stream.to_be_bytes().to_vec();
                p.extend_from_slice(&reply);
                let _ = out_tx.send(control(SYN_REPLY, 0, &p)).await;
                let request = h.get("requestid").cloned().unwrap_or_default();
                let port: u16 = h.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                let f = forwards.entry(request.clone()).or_default();
                f.port = port;
                stream_request.insert(stream, request.clone());
                match h.get("streamtype").map(String::as_str) {
                    Some("error") => f.error = Some(stream),
                    Some("data") => f.data = Some(stream),
                    _ => {
                        let mut p = stream.to_be_bytes().to_vec();
                        p.extend_from_slice(&1u32.to_be_bytes());
                        let _ = out_tx.send(control(RST_STREAM, 0, &p)).await;
                        continue;
                    }
                }
                if let (Some(error), Some(data_stream), None) = (f.error, f.data, &f.to_pod) {
                    let (tx, rx) = mpsc::channel(64);
                    f.to_pod = Some(tx);
                    tokio::spawn(forward(pid, f.port, error, data_stream, rx, out_tx.clone()));
                }
            }
            PING => {
                let _ = out_tx.send(control(PING, 0, &payload)).await;
            }
            GOAWAY => {
                tracing::debug!("port-forward session: GOAWAY");
                break;
            }
            RST_STREAM if payload.len() >= 4 => {
                let stream = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                if let Some(r) = stream_request.remove(&stream)
                    && let Some(f) = forwards.get(&r)
                    && let Some(tx) = &f.to_pod
                {
                    let _ = tx.send(None).await;
                }
            }
            // SETTINGS, WINDOW_UPDATE, HEADERS, NOOP: nothing to do for port forwarding.
            _ => {}
        }
    }
    drop(forwards);
    drop(out_tx);
    let _ = writer_task.await;
}

/// Connects to `port` in the pod's network namespace and copies between it and the data
/// stream; a failure goes on the error stream.
async fn forward(
    pid: i32,
    port: u16,
    error: u32,
    stream: u32,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let connected = crate::probe::in_netns(pid, move || {
        crate::probe::connect("127.0.0.1", port, Duration::from_secs(5))
    })
    .await
    .and_then(|s| {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
    });
    let socket = match connected {
        Ok(s) => s,
        Err(message) => {
            let text = format!("error forwarding port {port} to pod: {message}");
            let _ = out.send(data(error, 0, text.as_bytes())).await;
            let _ = out.send(data(error, FLAG_FIN, &[])).await;
            let _ = out.send(data(stream, FLAG_FIN, &[])).await;
            return;
        }
    };
    let (mut r, mut w) = socket.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(Some(chunk)) = from_client.recv().await {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(data(stream, 0, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(data(stream, FLAG_FIN, &[])).await;
    let _ = out.send(data(error, FLAG_FIN, &[])).await;
    to_pod.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // zlib's DICTID of the SPDY/3 dictionary, as every SPDY/3 peer sends it.
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for byte in &d {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip() {
        let mut sender = Headers::new();
        let mut receiver = Headers::new();
        for i in 0..3 {
            let port = format!("{}", 8080 + i);
            let block = sender.encode(&[("streamtype", "data"), ("port", &port)]);
            let h = receiver.decode(&block).unwrap();
            assert_eq!(h["streamtype"], "data");
            assert_eq!(h["port"], port);
        }
    }
}
