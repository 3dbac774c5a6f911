//! Mutual TLS over real sockets on 127.0.0.1: members with certificates
//! from the cluster's CA talk (messages and a streamed snapshot); a
//! plaintext peer, a certificate from another CA, an expired certificate, a
//! certificate for another node, a hello claiming another id, and a
//! certificate naming no node are each refused, logged and counted while
//! the node keeps serving its legitimate peer; certificates reload at run
//! time. Every certificate and key is made here, at test time.
#![cfg(feature = "tls")]

mod common;
use common::*;
use raftwire::tls::{PeerIdentity, TlsConfig, node_uri};
use raftwire::{Envelope, Error, MessageClass, RejectReason, ReportEvent, SnapshotStatus};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

const CLUSTER: u64 = 7;

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// What a node certificate says.
struct Leaf {
    sans: Vec<SanType>,
    expired: bool,
}

impl Leaf {
    fn node(node: u64) -> Leaf {
        Leaf::uri(&node_uri(CLUSTER, node))
    }

    fn uri(uri: &str) -> Leaf {
        Leaf {
            sans: vec![SanType::URI(uri.try_into().unwrap())],
            expired: false,
        }
    }
}

/// A certificate and key (PEM) for `leaf`, signed by `ca`.
fn issue(ca: &Ca, leaf: Leaf) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "node");
    params.subject_alt_names = leaf.sans;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if leaf.expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls(ca: &Ca, trusted: &[&Ca], leaf: Leaf) -> TlsConfig {
    let (cert, key) = issue(ca, leaf);
    let cas: String = trusted.iter().map(|c| c.pem.as_str()).collect();
    TlsConfig::from_pem(cert.as_bytes(), key.as_bytes(), cas.as_bytes()).unwrap()
}

fn tls_node(id: u64, tls: TlsConfig) -> Node {
    let mut c = config(id);
    c.tls = Some(tls);
    start(c)
}

/// A member of the cluster: certificate from `ca` naming `id`.
fn member(ca: &Ca, id: u64) -> Node {
    tls_node(id, tls(ca, &[ca], Leaf::node(id)))
}

/// `a` still serves `b`: a message each way arrives.
fn still_serving(a: &Node, b: &Node) {
    let (ia, ib) = (a.t.node_id(), b.t.node_id());
    a.t.send(vec![env(ib, ia, MessageClass::Other, b"ping")]);
    let got = recv_n(b.t.messages(), 1, 5);
    assert_eq!(got[0].payload, &b"ping"[..]);
    b.t.send(vec![env(ia, ib, MessageClass::Other, b"pong")]);
    let got = recv_n(a.t.messages(), 1, 5);
    assert_eq!(got[0].payload, &b"pong"[..]);
}

/// Two members of `ca`, ids 1 and 2, connected both ways.
fn pair(ca: &Ca) -> Vec<Node> {
    let nodes = vec![member(ca, 1), member(ca, 2)];
    connect_all(&nodes);
    nodes
}

/// A third node (id 3, `tls` or plaintext) that dials node 1 of `nodes`.
fn intruder(nodes: &[Node], tls: Option<TlsConfig>) -> Node {
    let mut c = config(3);
    c.tls = tls;
    let n = start(c);
    n.t.add_peer(1, &[nodes[0].t.local_addr()]).unwrap();
    n
}

/// Waits until `count` of node 1's TLS stats is at least 2 (two lanes
/// tried), then checks the intruder never connected and the members still
/// talk.
fn refused(nodes: &[Node], intruder: &Node, what: &str, count: impl Fn(&Node) -> u64) {
    refused_once(nodes, intruder, what, || count(&nodes[0]) >= 2);
}

/// Waits until `seen`, then checks the intruder never connected to node 1,
/// node 1 accepted only node 2's lanes, and the members still talk.
fn refused_once(nodes: &[Node], intruder: &Node, what: &str, seen: impl Fn() -> bool) {
    wait_until(what, 5, seen);
    assert!(intruder.t.active_since(1).is_none());
    assert_eq!(
        nodes[0].t.stats().inbound_accepted,
        2,
        "only node 2's lanes"
    );
    still_serving(&nodes[0], &nodes[1]);
}

#[test]
fn members_talk_over_mutual_tls() {
    let ca = ca("cluster CA");
    let nodes: Vec<Node> = (1..=3).map(|id| member(&ca, id)).collect();
    connect_all(&nodes);
    // Every class, sizes up to 1 MiB, between every pair.
    for a in &nodes {
        for b in &nodes {
            let (ia, ib) = (a.t.node_id(), b.t.node_id());
            if ia == ib {
                continue;
            }
            let sent: Vec<Envelope> = [0usize, 1, 4096, 1 << 20]
                .iter()
                .enumerate()
                .map(|(i, &size)| {
                    let payload: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
                    Envelope::new(ib, ia, MessageClass::Append, payload)
                })
                .collect();
            a.t.send(sent.clone());
            let got = recv_n(b.t.messages(), sent.len(), 5);
            assert_eq!(got, sent);
        }
    }
    // A streamed snapshot, verified byte by byte.
    let data: Vec<u8> = (0..5_000_000u32).map(|i| ((i * 31) >> 3) as u8).collect();
    let msg = env(2, 1, MessageClass::Snapshot, b"snap");
    nodes[0]
        .t
        .send_snapshot(msg, std::io::Cursor::new(data.clone()), data.len() as u64)
        .unwrap();
    let mut incoming = nodes[1]
        .t
        .snapshots()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    let mut got = Vec::new();
    incoming.data.read_to_end(&mut got).unwrap();
    assert!(got == data, "snapshot data differs");
    wait_event(&nodes[0].events, 5, |e| {
        *e == ReportEvent::Snapshot(2, SnapshotStatus::Finish)
    });
    for n in &nodes {
        let s = n.t.stats().tls;
        // Two lanes to each of two peers, and two lanes from each.
        assert!(s.handshakes >= 8, "node {}: {s:?}", n.t.node_id());
        assert_eq!(s.failures(), 0, "node {}: {s:?}", n.t.node_id());
        assert_eq!(n.t.stats().protocol_errors, 0);
        // By default the payload is TLS's to guard: both lanes from each
        // of two peers checksum frame headers only.
        assert!(
            s.header_only_checksums >= 4,
            "node {}: {s:?}",
            n.t.node_id()
        );
    }
}

/// Sends messages of several sizes and a streamed snapshot from `a` to
/// `b`, and checks every byte arrived.
fn exchange(a: &Node, b: &Node, seed: usize) {
    let (ia, ib) = (a.t.node_id(), b.t.node_id());
    let sent: Vec<Envelope> = [0usize, 145, 70_000, 1 << 20]
        .iter()
        .map(|&size| {
            let payload: Vec<u8> = (0..size).map(|j| (j * 13 + seed) as u8).collect();
            Envelope::new(ib, ia, MessageClass::Append, payload)
        })
        .collect();
    a.t.send(sent.clone());
    assert_eq!(recv_n(b.t.messages(), sent.len(), 5), sent);
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| ((i as usize * 31 + seed) >> 2) as u8)
        .collect();
    let msg = env(ib, ia, MessageClass::Snapshot, b"snap");
    a.t.send_snapshot(msg, std::io::Cursor::new(data.clone()), data.len() as u64)
        .unwrap();
    let mut incoming =
        b.t.snapshots()
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
    let mut got = Vec::new();
    incoming.data.read_to_end(&mut got).unwrap();
    assert!(got == data, "snapshot data differs");
    wait_event(&a.events, 5, |e| {
        *e == ReportEvent::Snapshot(ib, SnapshotStatus::Finish)
    });
}

#[test]
fn payload_checksums_are_each_senders_choice_under_tls() {
    let ca = ca("cluster CA");
    // Node 1 leaves the payload to TLS (the default); node 2 checksums it.
    let one = member(&ca, 1);
    let two = tls_node(
        2,
        tls(&ca, &[&ca], Leaf::node(2)).with_payload_checksums(true),
    );
    let nodes = vec![one, two];
    connect_all(&nodes);
    exchange(&nodes[0], &nodes[1], 1);
    exchange(&nodes[1], &nodes[0], 2);
    let (s1, s2) = (nodes[0].t.stats(), nodes[1].t.stats());
    // Node 2 heard header-only checksums from node 1 (two lanes and the
    // snapshot connection); node 1 heard full ones from node 2.
    assert!(s2.tls.header_only_checksums >= 3, "{:?}", s2.tls);
    assert_eq!(s1.tls.header_only_checksums, 0, "{:?}", s1.tls);
    for s in [&s1, &s2] {
        assert_eq!(s.protocol_errors, 0);
        assert_eq!(s.tls.failures(), 0);
    }
}

#[test]
fn tls_carries_every_size_exactly_through_small_socket_buffers() {
    // Records cut across 4 KiB kernel buffers, frames read whole from
    // rustls's plaintext, payloads written from their own buffers.
    let ca = ca("cluster CA");
    let nodes = cluster_with(&[1, 2], |c| {
        c.tls = Some(tls(&ca, &[&ca], Leaf::node(c.node_id)));
        small_socket_buffers(c);
    });
    let sent: Vec<Envelope> = [0usize, 17, 16 << 10, (64 << 10) - 29, 64 << 10, 300_001]
        .iter()
        .cycle()
        .take(24)
        .enumerate()
        .map(|(i, &size)| {
            let payload: Vec<u8> = (0..size).map(|j| (j * 13 + i) as u8).collect();
            Envelope::new(2, 1, MessageClass::Append, payload)
        })
        .collect();
    nodes[0].t.send(sent.clone());
    let got = recv_n(nodes[1].t.messages(), sent.len(), 10);
    assert!(got == sent, "messages arrived changed or out of order");
    assert_eq!(nodes[1].t.stats().protocol_errors, 0);
    assert_eq!(nodes[0].t.stats().peer(2).append_lane.dropped(), 0);
}

#[test]
fn a_plaintext_peer_is_refused_both_ways() {
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    // A plaintext node dials a TLS node: its hello is not a TLS record.
    let plain = intruder(&nodes, None);
    refused(&nodes, &plain, "not_tls at node 1", |n| {
        n.t.stats().tls.not_tls
    });
    // A TLS node dials a plaintext node: the plaintext node finds no
    // raftwire hello (a protocol error), and the TLS node sees the
    // connection closed in its handshake.
    nodes[1].t.add_peer(3, &[plain.t.local_addr()]).unwrap();
    wait_until("not_tls at node 2", 5, || {
        nodes[1].t.stats().tls.not_tls >= 2
    });
    wait_until("bad hello at node 3", 5, || {
        plain.t.stats().protocol_errors >= 2
    });
    assert!(nodes[1].t.active_since(3).is_none());
    still_serving(&nodes[1], &nodes[0]);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let (ca1, ca2) = (ca("cluster CA"), ca("another CA"));
    let nodes = pair(&ca1);
    // Node 3 trusts our CA but its certificate is from another one.
    let other = intruder(&nodes, Some(tls(&ca2, &[&ca1, &ca2], Leaf::node(3))));
    refused(&nodes, &other, "bad_certificate at node 1", |n| {
        n.t.stats().tls.bad_certificate
    });
    // It learns why: node 1 sent an alert.
    wait_until("refused_by_peer at node 3", 5, || {
        other.t.stats().tls.refused_by_peer >= 1
    });
}

#[test]
fn an_expired_certificate_is_refused() {
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    let leaf = Leaf {
        expired: true,
        ..Leaf::node(3)
    };
    let old = intruder(&nodes, Some(tls(&ca, &[&ca], leaf)));
    refused(&nodes, &old, "expired at node 1", |n| {
        n.t.stats().tls.expired
    });
}

#[test]
fn a_member_cannot_speak_as_another_member() {
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    // A valid certificate for node 3, in a transport that says it is node 4.
    let mut c = config(4);
    c.tls = Some(tls(&ca, &[&ca], Leaf::node(3)));
    let liar = start(c);
    liar.t.add_peer(1, &[nodes[0].t.local_addr()]).unwrap();
    refused(&nodes, &liar, "wrong_identity at node 1", |n| {
        n.t.stats().tls.wrong_identity
    });
    assert!(nodes[0].t.stats().inbound_rejected >= 2);
    // The liar is told why.
    wait_event(&liar.events, 5, |e| {
        *e == ReportEvent::Rejected(1, RejectReason::IdentityMismatch)
    });
}

#[test]
fn a_dialer_refuses_a_node_whose_certificate_names_another() {
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    let three = member(&ca, 3);
    // Node 1 believes node 5 is at node 3's address: node 3's certificate
    // gives it away before node 1 says anything.
    nodes[0].t.add_peer(5, &[three.t.local_addr()]).unwrap();
    wait_until("wrong_identity at node 1", 5, || {
        nodes[0].t.stats().tls.wrong_identity >= 2
    });
    assert!(nodes[0].t.active_since(5).is_none());
    assert_eq!(three.t.stats().inbound_accepted, 0);
    still_serving(&nodes[0], &nodes[1]);
}

#[test]
fn a_certificate_naming_no_node_of_this_cluster_is_refused() {
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    // Node 3 of cluster 8, signed by the same CA.
    let foreign = intruder(&nodes, Some(tls(&ca, &[&ca], Leaf::uri(&node_uri(8, 3)))));
    refused(&nodes, &foreign, "no_identity at node 1", |n| {
        n.t.stats().tls.no_identity
    });
}

#[test]
fn a_custom_identity_maps_dns_names() {
    let ca = ca("cluster CA");
    // node-<id>.raft.test -> id
    let by_dns = PeerIdentity::Custom(Arc::new(|cert| {
        cert.dns_names().iter().find_map(|d| {
            d.strip_suffix(".raft.test")?
                .strip_prefix("node-")?
                .parse()
                .ok()
        })
    }));
    let dns = |id: u64| Leaf {
        sans: vec![SanType::DnsName(
            format!("node-{id}.raft.test").try_into().unwrap(),
        )],
        expired: false,
    };
    let nodes: Vec<Node> = (1..=2)
        .map(|id| tls_node(id, tls(&ca, &[&ca], dns(id)).with_identity(by_dns.clone())))
        .collect();
    connect_all(&nodes);
    still_serving(&nodes[0], &nodes[1]);
    // The default (SAN URI) finds no id in these certificates.
    let uri_only = intruder(&nodes, Some(tls(&ca, &[&ca], Leaf::node(3))));
    refused_once(&nodes, &uri_only, "no_identity at node 3", || {
        uri_only.t.stats().tls.no_identity >= 1
    });
}

#[test]
fn certificates_reload_without_a_restart() {
    let (ca1, ca2) = (ca("old CA"), ca("new CA"));
    let nodes = pair(&ca1);
    // Node 3 has a certificate from the new CA, and trusts both.
    let three = intruder(&nodes, Some(tls(&ca2, &[&ca1, &ca2], Leaf::node(3))));
    wait_until("node 1 refuses the new CA", 5, || {
        nodes[0].t.stats().tls.bad_certificate >= 1
    });
    // A bad reload changes nothing.
    let bad = TlsConfig::from_pem(b"not pem", b"nor this", ca1.pem.as_bytes());
    assert!(matches!(bad, Err(Error::Tls(_))));
    // Node 1 reloads from files: a new certificate of its own from the new
    // CA, trusting both CAs.
    let dir = std::env::temp_dir().join(format!("raftwire-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = issue(&ca2, Leaf::node(1));
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    std::fs::write(dir.join("ca.crt"), format!("{}{}", ca1.pem, ca2.pem)).unwrap();
    let reloaded = TlsConfig::from_pem_files(
        dir.join("node.crt"),
        dir.join("node.key"),
        dir.join("ca.crt"),
    );
    let missing = TlsConfig::from_pem_files(
        dir.join("nope.crt"),
        dir.join("node.key"),
        dir.join("ca.crt"),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let err = missing.unwrap_err().to_string();
    assert!(err.contains("nope.crt"), "{err}");
    nodes[0].t.reload_tls(reloaded.unwrap()).unwrap();
    // Node 3's next attempt gets in; node 2's open connections are untouched.
    wait_until("node 3 connected to node 1", 5, || {
        three.t.active_since(1).is_some()
    });
    let three_sent = env(1, 3, MessageClass::Other, b"hello");
    three.t.send(vec![three_sent.clone()]);
    assert_eq!(recv_n(nodes[0].t.messages(), 1, 5), vec![three_sent]);
    still_serving(&nodes[0], &nodes[1]);
    // Node 2 trusts only the old CA: its new connections to node 1 now fail
    // (node 1's new certificate), which shows node 1 really uses it.
    nodes[1].t.remove_peer(1).unwrap();
    nodes[1].t.add_peer(1, &[nodes[0].t.local_addr()]).unwrap();
    wait_until("node 2 refuses node 1's new certificate", 5, || {
        nodes[1].t.stats().tls.bad_certificate >= 1
    });
}

#[test]
fn reload_needs_a_transport_started_with_tls() {
    let ca = ca("cluster CA");
    let plain = node(1);
    let r = plain.t.reload_tls(tls(&ca, &[&ca], Leaf::node(1)));
    assert!(matches!(r, Err(Error::Tls(_))), "{r:?}");
}

#[test]
fn plaintext_must_be_asked_for_off_loopback() {
    let ca = ca("cluster CA");
    // Listening on every interface without TLS is refused...
    let mut c = raftwire::Config::new(1, "0.0.0.0:0".parse().unwrap());
    assert_eq!(c.validate().unwrap_err().field, "insecure_plaintext");
    // ...but fine with TLS, or when plaintext is asked for.
    c.tls = Some(tls(&ca, &[&ca], Leaf::node(1)));
    c.validate().unwrap();
    c.tls = None;
    c.insecure_plaintext = true;
    c.validate().unwrap();
    // Peers off loopback likewise. 0.0.0.0 is not a loopback address, yet
    // a dial to it stays on this machine (and is refused on port 1).
    let plain = node(1);
    let r = plain.t.add_peer(2, &["0.0.0.0:1"]);
    assert!(matches!(r, Err(Error::BadAddress { .. })), "{r:?}");
    let secure = member(&ca, 1);
    secure.t.add_peer(2, &["0.0.0.0:1"]).unwrap();
}

#[test]
fn the_documented_openssl_commands_make_a_working_cluster() {
    // docs/TLS.md's `sh tls-setup` block, run as written.
    let doc = include_str!("../docs/TLS.md");
    let start_tag = "```sh tls-setup\n";
    let begin = doc
        .find(start_tag)
        .expect("docs/TLS.md has a tls-setup block")
        + start_tag.len();
    let script = &doc[begin..begin + doc[begin..].find("\n```").unwrap()];
    let dir = std::env::temp_dir().join(format!("raftwire-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-e", "-c", script])
        .current_dir(&dir)
        .output()
        .expect("openssl is needed for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "the tls-setup commands failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let f = |name: String| dir.join(name);
            let tls = TlsConfig::from_pem_files(
                f(format!("node-{id}.crt")),
                f(format!("node-{id}.key")),
                f("ca.crt".into()),
            )
            .unwrap();
            tls_node(id, tls)
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    connect_all(&nodes);
    still_serving(&nodes[0], &nodes[1]);
    still_serving(&nodes[2], &nodes[0]);
    for n in &nodes {
        assert_eq!(n.t.stats().tls.failures(), 0);
    }
}

#[test]
fn broken_tls_and_stalled_handshakes_cost_only_their_connection() {
    use std::io::Write;
    let ca = ca("cluster CA");
    let nodes = pair(&ca);
    let addr = nodes[0].t.local_addr();
    // A handshake record header followed by garbage.
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    bytes.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    garbage.write_all(&bytes).unwrap();
    wait_until("malformed TLS counted", 5, || {
        nodes[0].t.stats().tls.other >= 1
    });
    // A client that starts a TLS record and stops: closed at the
    // handshake timeout, like any stalled handshake.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled.write_all(&[0x16, 0x03]).unwrap();
    wait_until("stalled TLS handshake closed", 5, || {
        nodes[0].t.stats().handshake_timeouts >= 1
    });
    let s = nodes[0].t.stats();
    assert_eq!(s.inbound_accepted, 2, "only node 2's lanes");
    still_serving(&nodes[0], &nodes[1]);
}

/// TLS connections cut mid-record (behind a fault proxy) reconnect; every
/// message is delivered in order or counted as dropped, and only messages
/// in flight at a cut are lost.
#[cfg(feature = "testing")]
#[test]
fn cut_tls_connections_reconnect_and_lose_nothing_silently() {
    use raftwire::testing::FaultProxy;
    let ca = ca("cluster CA");
    let (n1, n2) = (member(&ca, 1), member(&ca, 2));
    let proxy = FaultProxy::start(n2.t.local_addr()).unwrap();
    n1.t.add_peer(2, &[proxy.addr()]).unwrap();
    n2.t.add_peer(1, &[n1.t.local_addr()]).unwrap();
    wait_connected(&n1.t, 2);
    const WINDOW: u64 = 8;
    let payload = vec![7u8; 256 << 10];
    let total = 400u64;
    let mut got: Vec<u64> = Vec::new();
    let drain = |got: &mut Vec<u64>| {
        while let Ok(m) = n2.t.messages().try_recv() {
            got.push(u64::from_be_bytes(m.payload[..8].try_into().unwrap()));
        }
    };
    // Everything before `floor` has arrived or was lost to a cut.
    let mut floor = 0u64;
    let mut cut_at = Vec::new();
    for i in 0..total {
        // At most WINDOW messages (2 MiB) outstanding, like a Raft
        // leader's window.
        wait_until("room in the window", 10, || {
            drain(&mut got);
            let next = got.last().map_or(0, |&g| g + 1).max(floor);
            i < next + WINDOW
        });
        let mut p = payload.clone();
        p[..8].copy_from_slice(&i.to_be_bytes());
        n1.t.send(vec![Envelope::new(2, 1, MessageClass::Append, p)]);
        if i % 100 == 50 {
            // Cut while 256 KiB messages (many TLS records each) are moving,
            // then wait for the new TLS connection before going on.
            let at = std::time::Instant::now();
            assert_eq!(proxy.cut(), 2, "both lanes cut");
            cut_at.push(i);
            wait_until("a new append connection", 5, || {
                let p = n1.t.stats().peer(2);
                p.append_lane.connected_since.is_some_and(|c| c > at)
            });
            floor = i + 1;
        }
    }
    wait_until("the last message", 10, || {
        drain(&mut got);
        got.last() == Some(&(total - 1))
    });
    let s1 = n1.t.stats();
    let dropped = s1.peer(2).append_lane.dropped();
    let lost: Vec<u64> = (0..total)
        .filter(|i| got.binary_search(i).is_err())
        .collect();
    println!(
        "{} of {total} delivered, lost {lost:?}; {dropped} counted as dropped ({:?}); {} reconnects",
        got.len(),
        s1.peer(2).append_lane.drops,
        s1.peer(2).reconnects
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    // Delivered or counted, never neither (a message whose delivery report
    // was cut off counts as dropped in flight although it arrived).
    assert!(
        lost.len() as u64 <= dropped,
        "lost {} > dropped {dropped}",
        lost.len()
    );
    // Only what was in flight at a cut is lost.
    for l in &lost {
        assert!(
            cut_at.iter().any(|&c| *l <= c && c < l + WINDOW + 1),
            "message {l} lost away from the cuts at {cut_at:?}"
        );
    }
    assert!(s1.peer(2).reconnects >= 4);
    // Cuts are connection losses, not TLS refusals, and not protocol errors.
    assert_eq!(n2.t.stats().tls.failures(), 0, "{:?}", n2.t.stats().tls);
    assert_eq!(n2.t.stats().protocol_errors, 0);
    still_serving(&n1, &n2);
    proxy.stop();
}
