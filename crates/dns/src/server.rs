//! The DNS server: hickory-server's UDP and TCP listeners around a [`Handler`] that answers
//! cluster names from the current [`ClusterRecords`] snapshot and forwards (or refuses) the
//! rest, as CoreDNS's `kubernetes` plus `forward . /etc/resolv.conf` do.
//!
//! Forwarding relays the query bytes unchanged to each upstream in turn (UDP for UDP
//! queries, TCP for TCP queries or when the UDP answer came back truncated) and returns the
//! upstream's sections; a dead upstream costs [`Upstream`]'s timeout before the next is tried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::records::{ClusterRecords, Lookup};
use crate::{Error, Result};

/// Where names outside the cluster domain go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Answer REFUSED.
    Refuse,
    /// Relay to these servers, in order, each given `timeout`.
    Forward {
        /// The upstream servers (port 53 unless given).
        servers: Vec<SocketAddr>,
        /// How long to wait for one server.
        timeout: Duration,
    },
}

impl Upstream {
    /// Forward to the nameservers of a resolv.conf (the host's `/etc/resolv.conf`), REFUSED if
    /// it lists none.
    pub fn from_resolv_conf(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let conf = crate::resolv::ResolvConf::read(path)?;
        let servers: Vec<SocketAddr> = conf
            .nameservers
            .iter()
            .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Ok(if servers.is_empty() {
            Upstream::Refuse
        } else {
            Upstream::Forward {
                servers,
                timeout: Duration::from_secs(2),
            }
        })
    }
}

/// Answers queries: cluster names from the snapshot, the rest per [`Upstream`].
#[derive(Clone)]
pub struct Handler {
    records: Arc<ArcSwap<ClusterRecords>>,
    upstream: Arc<Upstream>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("zone", &self.records.load().zone().to_ascii())
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Handler {
    /// A handler answering from `records` (replace its content to change the answers).
    pub fn new(records: Arc<ArcSwap<ClusterRecords>>, upstream: Upstream) -> Self {
        Handler {
            records,
            upstream: Arc::new(upstream),
        }
    }

    /// The snapshot the handler answers from.
    pub fn records(&self) -> &Arc<ArcSwap<ClusterRecords>> {
        &self.records
    }
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    edns: Option<&Edns>,
    mut response: R,
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let msg = builder.error_msg(&request.metadata, code);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(err) => {
            tracing::debug!(%err, "sending a DNS error response");
            serve_failed(request)
        }
    }
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_proto::op::Header {
        metadata,
        counts: Default::default(),
    }
    .into()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        if let Some(req) = &request.edns
            && req.version() > 0
        {
            return send_error(request, ResponseCode::BADVERS, edns.as_ref(), response).await;
        }
        if request.metadata.message_type != MessageType::Query {
            return send_error(request, ResponseCode::FormErr, edns.as_ref(), response).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, ResponseCode::NotImp, edns.as_ref(), response).await;
        }
        let Ok(info) = request.request_info() else {
            return send_error(request, ResponseCode::FormErr, edns.as_ref(), response).await;
        };
        let name: &hickory_proto::rr::Name = info.query.name();
        let qtype = info.query.query_type();
        // The snapshot guard is dropped here, before any await.
        let lookup = self.records.load().lookup(name, qtype);
        match lookup {
            Lookup::Answer(answer) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                metadata.recursion_available = matches!(*self.upstream, Upstream::Forward { .. });
                metadata.response_code = answer.code;
                let mut builder = MessageResponseBuilder::new(&request.queries, None);
                if let Some(edns) = &edns {
                    builder.edns(edns);
                }
                let msg = builder.build(
                    metadata,
                    answer.answers.iter(),
                    std::iter::empty(),
                    answer.authorities.iter(),
                    answer.additionals.iter(),
                );
                match response.send_response(msg).await {
                    Ok(info) => info,
                    Err(err) => {
                        tracing::debug!(%err, "sending a DNS response");
                        serve_failed(request)
                    }
                }
            }
            Lookup::Outside => match &*self.upstream {
                Upstream::Refuse => {
                    send_error(request, ResponseCode::Refused, edns.as_ref(), response).await
                }
                Upstream::Forward { servers, timeout } => {
                    let tcp = request.protocol() == Protocol::Tcp;
                    let Some(reply) = forward(request.as_slice(), servers, *timeout, tcp).await
                    else {
                        return send_error(
                            request,
                            ResponseCode::ServFail,
                            edns.as_ref(),
                            response,
                        )
                        .await;
                    };
                    let mut metadata = reply.metadata;
                    metadata.id = request.metadata.id;
                    let mut builder = MessageResponseBuilder::new(&request.queries, None);
                    if let Some(edns) = &edns {
                        builder.edns(edns);
                    }
                    let msg = builder.build(
                        metadata,
                        reply.answers.iter(),
                        reply.authorities.iter(),
                        std::iter::empty(),
                        reply.additionals.iter(),
                    );
                    match response.send_response(msg).await {
                        Ok(info) => info,
                        Err(err) => {
                            tracing::debug!(%err, "sending a forwarded DNS response");
                            serve_failed(request)
                        }
                    }
                }
            },
        }
    }
}

/// Relay `query` to the first upstream that answers.
async fn forward(
    query: &[u8],
    servers: &[SocketAddr],
    timeout: Duration,
    tcp: bool,
) -> Option<Message> {
    for server in servers {
        let attempt = async {
            if !tcp {
                let reply = forward_udp(query, *server).await?;
                if !reply.metadata.truncation {
                    return Some(reply);
                }
            }
            forward_tcp(query, *server).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%server, "upstream DNS server did not answer"),
        }
    }
    None
}

async fn forward_udp(query: &[u8], server: SocketAddr) -> Option<Message> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(server).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        // Ignore stray datagrams that do not answer our query id.
        if n >= 2 && buf[..2] == query[..2] {
            return Message::from_vec(&buf[..n]).ok();
        }
    }
}

async fn forward_tcp(query: &[u8], server: SocketAddr) -> Option<Message> {
    let mut stream = TcpStream::connect(server).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    stream.write_all(&len.to_be_bytes()).await.ok()?;
    stream.write_all(query).await.ok()?;
    let len = stream.read_u16().await.ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.ok()?;
    Message::from_vec(&buf).ok()
}

/// A DNS server listening on UDP and TCP on one address.
pub struct DnsServer {
    server: hickory_server::Server<Handler>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl DnsServer {
    /// Serve `handler` on UDP and TCP at `addr` (port 0 picks one free port for both).
    pub async fn bind(addr: SocketAddr, handler: Handler) -> Result<Self> {
        let serve = |source| Error::Serve { addr, source };
        let (udp, tcp) = if addr.port() != 0 {
            let udp = UdpSocket::bind(addr).await.map_err(serve)?;
            let tcp = TcpListener::bind(addr).await.map_err(serve)?;
            (udp, tcp)
        } else {
            // One port for both protocols: take a free UDP port, then the same TCP port.
            let mut tries = 0;
            loop {
                let udp = UdpSocket::bind(addr).await.map_err(serve)?;
                let port = udp.local_addr().map_err(serve)?.port();
                match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                    Ok(tcp) => break (udp, tcp),
                    Err(err) if tries < 20 => {
                        tracing::debug!(%err, port, "TCP port taken, trying another");
                        tries += 1;
                    }
                    Err(err) => return Err(serve(err)),
                }
            }
        };
        let local_addr = udp.local_addr().map_err(serve)?;
        let mut server = hickory_server::Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64);
        Ok(DnsServer { server, local_addr })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until the listeners fail or [`DnsServer::shutdown`] is called.
    pub async fn run(mut self) -> Result<()> {
        let addr = self.local_addr;
        self.server
            .block_until_done()
            .await
            .map_err(|err| Error::Serve {
                addr,
                source: std::io::Error::other(err.to_string()),
            })
    }

    /// Stop serving: in-flight queries finish, the sockets close.
    pub async fn shutdown(mut self) -> Result<()> {
        let addr = self.local_addr;
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|err| Error::Serve {
                addr,
                source: std::io::Error::other(err.to_string()),
            })
    }
}
