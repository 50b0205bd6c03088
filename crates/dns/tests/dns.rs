//! The DNS server against the in-process API server: queries over UDP and TCP on 127.0.0.1
//! for every record kind (ClusterIP A, headless A, per-pod/StatefulSet hostnames, SRV,
//! ExternalName CNAME, NXDOMAIN vs NODATA), answers that follow Service and EndpointSlice
//! changes, and names outside the cluster refused or forwarded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_dns::hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use berth_dns::hickory_proto::rr::{Name, RData, RecordType};
use berth_dns::{ClusterDns, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn client() -> Result<Client> {
    let server = berth_apiserver::ApiServer::in_memory().await?;
    Ok(Client::new(server.router(), "default"))
}

fn query(name: &str, qtype: RecordType) -> Result<Vec<u8>> {
    let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name)?, qtype));
    Ok(msg.to_vec()?)
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    socket.send(&query(name, qtype)?).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .context("UDP answer timed out")??;
    Ok(Message::from_vec(&buf[..n])?)
}

async fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    let q = query(name, qtype)?;
    stream.write_all(&(q.len() as u16).to_be_bytes()).await?;
    stream.write_all(&q).await?;
    let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .context("TCP answer timed out")??;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

fn ips(msg: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn create_service(client: &Client, ns: &str, body: serde_json::Value) -> Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(body)?)
        .await?;
    Ok(())
}

async fn create_slice(client: &Client, ns: &str, body: serde_json::Value) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(body)?)
        .await?;
    Ok(())
}

/// Poll `f` until it returns true (the watch is asynchronous).
async fn eventually<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    for _ in 0..200 {
        if f().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("timed out waiting for {what}")
}

#[tokio::test]
async fn records_over_udp_and_tcp_follow_the_api() -> Result<()> {
    let client = client().await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"}}))?,
        )
        .await?;
    create_service(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
    )
    .await?;
    create_service(
        &client,
        "db",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "pg"},
            "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]},
        }),
    )
    .await?;
    create_service(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        }),
    )
    .await?;
    create_slice(
        &client,
        "db",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "pg-1", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "ports": [{"name": "sql", "port": 15432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"], "hostname": "pg-1", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.7"], "hostname": "pg-2", "conditions": {"ready": false}},
            ],
        }),
    )
    .await?;

    let dns = ClusterDns::new("cluster.local")?;
    let server = dns.bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let runner = dns.clone();
    let watch_client = client.clone();
    let task = tokio::spawn(async move { runner.run(watch_client, server).await });

    eventually("the first snapshot", || async {
        Ok(dns.records().service_count() == 3)
    })
    .await?;

    // ClusterIP A over UDP and TCP.
    for msg in [
        udp(addr, "web.default.svc.cluster.local.", RecordType::A).await?,
        tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await?,
    ] {
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.metadata.authoritative);
        assert_eq!(ips(&msg), [ip("10.96.0.10")]);
    }
    // NODATA: the name exists, no AAAA; the SOA rides in the authority section.
    let nodata = udp(addr, "web.default.svc.cluster.local.", RecordType::AAAA).await?;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(matches!(nodata.authorities[0].data, RData::SOA(_)));
    // NXDOMAIN.
    let nx = tcp(addr, "nope.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(nx.authorities[0].data, RData::SOA(_)));

    // Headless: the ready endpoints only; StatefulSet-style pod hostnames.
    let headless = udp(addr, "pg.db.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(ips(&headless), [ip("10.244.0.5"), ip("10.244.0.6")]);
    let pod = tcp(addr, "pg-1.pg.db.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(ips(&pod), [ip("10.244.0.6")]);
    let not_ready = udp(addr, "pg-2.pg.db.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(not_ready.metadata.response_code, ResponseCode::NXDomain);

    // SRV: ClusterIP targets the Service, headless each pod (with its target port).
    let srv = udp(
        addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    let RData::SRV(s) = &srv.answers[0].data else {
        bail!("not SRV: {srv:?}")
    };
    assert_eq!(s.port, 80);
    assert_eq!(
        s.target,
        Name::from_ascii("web.default.svc.cluster.local.")?
    );
    assert!(
        matches!(&srv.additionals[0].data, RData::A(a) if IpAddr::V4(a.0) == ip("10.96.0.10")),
        "{srv:?}"
    );
    let hsrv = tcp(addr, "_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV).await?;
    let mut targets: Vec<(String, u16)> = hsrv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            ("pg-0.pg.db.svc.cluster.local.".to_string(), 15432),
            ("pg-1.pg.db.svc.cluster.local.".to_string(), 15432)
        ]
    );
    assert_eq!(hsrv.additionals.len(), 2);

    // ExternalName: a CNAME.
    let ext = udp(addr, "ext.default.svc.cluster.local.", RecordType::A).await?;
    assert!(
        matches!(&ext.answers[0].data, RData::CNAME(c) if c.0 == Name::from_ascii("example.org.")?)
    );

    // Outside the cluster domain with no upstream: REFUSED.
    let refused = udp(addr, "example.com.", RecordType::A).await?;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

    task.abort();
    Ok(())
}

#[tokio::test]
async fn answers_follow_service_and_endpointslice_changes() -> Result<()> {
    let client = client().await?;
    let dns = ClusterDns::new("cluster.local")?;
    let server = dns.bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let runner = dns.clone();
    let watch_client = client.clone();
    let task = tokio::spawn(async move { runner.run(watch_client, server).await });

    let nx = udp(addr, "api.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    create_service(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api"},
            "spec": {"clusterIP": "None", "ports": [{"name": "grpc", "port": 9000}]},
        }),
    )
    .await?;
    // A headless Service without ready endpoints exists: NODATA, not NXDOMAIN.
    eventually("the Service", || async {
        let m = udp(addr, "api.default.svc.cluster.local.", RecordType::A).await?;
        Ok(m.metadata.response_code == ResponseCode::NoError && m.answers.is_empty())
    })
    .await?;

    create_slice(
        &client,
        "default",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-x", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 9000}],
            "endpoints": [{"addresses": ["10.244.1.1"], "conditions": {"ready": false}}],
        }),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = udp(addr, "api.default.svc.cluster.local.", RecordType::A).await?;
    assert!(ips(&m).is_empty(), "a not-ready endpoint is not served");

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .patch(
            "api-x",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.1.1"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
            ]})),
        )
        .await?;
    eventually("the ready endpoints", || async {
        let m = tcp(addr, "api.default.svc.cluster.local.", RecordType::A).await?;
        Ok(ips(&m) == [ip("10.244.1.1"), ip("10.244.1.2")])
    })
    .await?;
    // An endpoint without a hostname answers under its dashed address.
    let dashed = udp(
        addr,
        "10-244-1-2.api.default.svc.cluster.local.",
        RecordType::A,
    )
    .await?;
    assert_eq!(ips(&dashed), [ip("10.244.1.2")]);

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.delete("api", &DeleteParams::default()).await?;
    eventually("the deletion", || async {
        let m = udp(addr, "api.default.svc.cluster.local.", RecordType::A).await?;
        Ok(m.metadata.response_code == ResponseCode::NXDomain)
    })
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn other_names_are_forwarded_to_the_upstream() -> Result<()> {
    // The upstream is a second cluster DNS server for another domain: forwarding relays to it.
    let upstream_dns = ClusterDns::new("upstream.test")?;
    let upstream = upstream_dns.bind("127.0.0.1:0".parse()?).await?;
    let upstream_addr = upstream.local_addr();
    let up_task = tokio::spawn(upstream.run());

    let dns = ClusterDns::new("cluster.local")?.upstream(Upstream::Forward {
        servers: vec![upstream_addr],
        timeout: Duration::from_secs(2),
    });
    let server = dns.bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let task = tokio::spawn(server.run());

    for msg in [
        udp(addr, "dns-version.upstream.test.", RecordType::TXT).await?,
        tcp(addr, "dns-version.upstream.test.", RecordType::TXT).await?,
    ] {
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&msg.answers[0].data, RData::TXT(_)), "{msg:?}");
    }
    let nx = udp(addr, "nothing.upstream.test.", RecordType::A).await?;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // A dead upstream: SERVFAIL after the timeout, not a hang.
    let dead = ClusterDns::new("cluster.local")?.upstream(Upstream::Forward {
        servers: vec!["127.0.0.1:9".parse()?],
        timeout: Duration::from_millis(200),
    });
    let dead_server = dead.bind("127.0.0.1:0".parse()?).await?;
    let dead_addr = dead_server.local_addr();
    let dead_task = tokio::spawn(dead_server.run());
    let fail = udp(dead_addr, "example.com.", RecordType::A).await?;
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);

    task.abort();
    up_task.abort();
    dead_task.abort();
    Ok(())
}

#[tokio::test]
async fn malformed_queries_do_not_stop_the_server() -> Result<()> {
    let dns = ClusterDns::new("cluster.local")?;
    let server = dns.bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let task = tokio::spawn(server.run());
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    socket.send(b"\x00\x01garbage").await?;
    socket.send(&[0u8; 3]).await?;
    // Still answering.
    let soa = udp(addr, "cluster.local.", RecordType::SOA).await?;
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    assert!(
        ClusterDns::new(".").is_err(),
        "the root cannot be the cluster domain"
    );
    assert!(ClusterDns::new("bad..domain").is_err());
    task.abort();
    Ok(())
}
