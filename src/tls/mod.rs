//! Mutual TLS between members (feature `tls`).
//!
//! With [`Config::tls`](crate::Config::tls) set, every connection — lanes,
//! snapshots, in both directions — runs TLS 1.3 (rustls, `ring` provider)
//! inside the event loop, and both ends verify each other:
//!
//! * each node presents its certificate chain and proves it holds the key;
//! * the peer's chain must lead to one of the CAs in the [`TlsConfig`]
//!   (expired or not-yet-valid certificates are refused);
//! * the peer's certificate must name a node id of this cluster, by default
//!   as a subject alternative name URI `raftwire://<cluster-id>/<node-id>`
//!   (both decimal), or through a function of yours ([`PeerIdentity`]);
//! * the dialer checks that the certificate names the node it dialed, and
//!   the acceptor checks that the raftwire hello's `from` is the node the
//!   certificate names (reject reason `identity_mismatch`): a member with a
//!   valid certificate cannot speak as another member.
//!
//! Nothing falls back to plaintext: a TLS node refuses a plaintext peer
//! (counted as [`TlsStats::not_tls`](crate::TlsStats::not_tls)). Session
//! resumption is off, so every connection presents and verifies
//! certificates; connections are long-lived, so this costs one handshake
//! per (re)connect.
//!
//! [`Transport::reload_tls`](crate::Transport::reload_tls) replaces the
//! certificates, key and CAs at run time: connections made after it use
//! the new ones; open connections keep the session they have.
//!
//! See the crate docs ("Securing a cluster") for the certificate layout and
//! the commands that make one.

mod names;

use crate::error::{Error, TlsFailure};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use rustls::pki_types;

/// The URI that names node `node_id` of cluster `cluster_id` in a
/// certificate's subject alternative names, as [`PeerIdentity::SanUri`]
/// expects it: `raftwire://<cluster_id>/<node_id>`, both decimal.
///
/// ```
/// assert_eq!(raftwire::tls::node_uri(0xC0FFEE, 3), "raftwire://12648430/3");
/// ```
pub fn node_uri(cluster_id: u64, node_id: u64) -> String {
    names::node_uri(cluster_id, node_id)
}

/// Entry points for the fuzz targets (fuzz/, built with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// The DNS names and URIs of a DER certificate, or `Err` if malformed.
    #[allow(clippy::type_complexity)]
    pub fn subject_alt_names(der: &[u8]) -> Result<(Vec<&str>, Vec<&str>), ()> {
        super::names::subject_alt_names(der)
            .map(|n| (n.dns, n.uris))
            .map_err(|_| ())
    }

    /// See `node_uri` and the SAN URI rule.
    pub fn node_id_from_uri(uri: &str, cluster_id: u64) -> Option<u64> {
        super::names::node_id_from_uri(uri, cluster_id)
    }
}

/// A verified peer certificate, as shown to a [`PeerIdentity::Custom`]
/// function.
#[derive(Debug)]
pub struct PeerCertificate<'a> {
    der: &'a [u8],
    dns: Vec<&'a str>,
    uris: Vec<&'a str>,
}

impl<'a> PeerCertificate<'a> {
    /// The end-entity certificate, DER-encoded.
    pub fn der(&self) -> &'a [u8] {
        self.der
    }

    /// Its DNS subject alternative names, in certificate order.
    pub fn dns_names(&self) -> &[&'a str] {
        &self.dns
    }

    /// Its URI subject alternative names, in certificate order.
    pub fn uris(&self) -> &[&'a str] {
        &self.uris
    }
}

/// A function from a verified peer certificate to the node id it names.
pub type IdentityFn = dyn Fn(&PeerCertificate<'_>) -> Option<u64> + Send + Sync;

/// How a peer's certificate names its node id.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum PeerIdentity {
    /// A subject alternative name URI `raftwire://<cluster-id>/<node-id>`
    /// (see [`node_uri`]) whose cluster id is ours. A certificate with
    /// several such URIs for different nodes names none (refused).
    #[default]
    SanUri,
    /// Your function of the verified certificate, for example mapping a DNS
    /// name such as `node-3.raft.example.com` to 3. It runs on the event
    /// loop thread for every TLS handshake: keep it fast, it must not
    /// block. `None` (or a panic) refuses the peer.
    Custom(Arc<IdentityFn>),
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::SanUri => f.write_str("SanUri"),
            PeerIdentity::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// This node's certificate chain and key, the CAs that sign its peers, and
/// how a peer certificate names its node id.
///
/// ```no_run
/// use raftwire::Config;
/// use raftwire::tls::TlsConfig;
///
/// let mut config = Config::new(1, "10.0.0.1:7001".parse().unwrap());
/// config.cluster_id = 7;
/// config.tls = Some(TlsConfig::from_pem_files(
///     "/etc/raft/node-1.crt", // this node's certificate, then intermediates
///     "/etc/raft/node-1.key", // its private key (PKCS#8, PKCS#1 or SEC1)
///     "/etc/raft/ca.crt",     // the CA(s) that sign every member
/// )?);
/// # Ok::<(), raftwire::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    cas: Vec<CertificateDer<'static>>,
    identity: PeerIdentity,
    payload_checksums: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("chain", &format_args!("{} certificates", self.chain.len()))
            .field("key", &format_args!("<private>"))
            .field("cas", &format_args!("{} certificates", self.cas.len()))
            .field("identity", &self.identity)
            .field("payload_checksums", &self.payload_checksums)
            .finish()
    }
}

fn tls_err(what: &str, e: impl fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

fn pem_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(what, e))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no CERTIFICATE in the PEM")));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| tls_err(&path.display().to_string(), e))
}

impl TlsConfig {
    /// From DER: this node's certificate followed by any intermediates, its
    /// private key, and the CA certificates that sign peers.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
    ) -> TlsConfig {
        TlsConfig {
            chain,
            key: Arc::new(key),
            cas,
            identity: PeerIdentity::SanUri,
            payload_checksums: false,
        }
    }

    /// From PEM text: `chain` holds one or more CERTIFICATE blocks (this
    /// node's first), `key` a private key block (PKCS#8, PKCS#1 or SEC1),
    /// `cas` one or more CERTIFICATE blocks.
    pub fn from_pem(chain: &[u8], key: &[u8], cas: &[u8]) -> Result<TlsConfig, Error> {
        let chain = pem_certs("certificate chain", chain)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls_err("private key", e))?;
        let cas = pem_certs("CA certificates", cas)?;
        Ok(TlsConfig::new(chain, key, cas))
    }

    /// From PEM files (see [`from_pem`](TlsConfig::from_pem)). Errors name
    /// the file.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        cas: impl AsRef<Path>,
    ) -> Result<TlsConfig, Error> {
        let name = |p: &Path| p.display().to_string();
        let (chain, key, cas) = (chain.as_ref(), key.as_ref(), cas.as_ref());
        let chain_certs = pem_certs(&name(chain), &read(chain)?)?;
        let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| tls_err(&name(key), e))?;
        let ca_certs = pem_certs(&name(cas), &read(cas)?)?;
        Ok(TlsConfig::new(chain_certs, key, ca_certs))
    }

    /// Sets how a peer certificate names its node id (default
    /// [`PeerIdentity::SanUri`]).
    pub fn with_identity(mut self, identity: PeerIdentity) -> TlsConfig {
        self.identity = identity;
        self
    }

    /// Whether the frames this node sends carry a CRC-32C of their payload
    /// as well as of their header (default `false`). TLS record protection
    /// (an AEAD) already authenticates every byte, so by default a node
    /// asks in its hello for header-only checksums on the connections it
    /// dials, and a snapshot stream carries no whole-stream checksum (its
    /// size is still checked). Each direction is the sender's choice: a
    /// node with this `true` still accepts header-only frames from peers
    /// that ask for them. docs/PROTOCOL.md, "Checksums under TLS".
    pub fn with_payload_checksums(mut self, on: bool) -> TlsConfig {
        self.payload_checksums = on;
        self
    }

    /// See [`with_payload_checksums`](TlsConfig::with_payload_checksums).
    pub fn payload_checksums(&self) -> bool {
        self.payload_checksums
    }
}

/// The rustls configurations built from a [`TlsConfig`]: what the event
/// loop uses for every new connection.
pub(crate) struct TlsContext {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: PeerIdentity,
    cluster_id: u64,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsContext")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsContext {
    /// Checks the certificates and key and builds both sides' configs.
    pub fn build(cfg: &TlsConfig, cluster_id: u64) -> Result<TlsContext, Error> {
        if cfg.chain.is_empty() {
            return Err(Error::Tls("the certificate chain is empty".into()));
        }
        let mut roots = RootCertStore::empty();
        for ca in &cfg.cas {
            roots
                .add(ca.clone())
                .map_err(|e| tls_err("CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("no CA certificates".into()));
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let versions = &[&rustls::version::TLS13];

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_err("CA certificates", e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| tls_err("protocol versions", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(cfg.chain.clone(), cfg.key.clone_key())
            .map_err(|e| tls_err("certificate and key", e))?;
        // Every connection verifies certificates afresh: no resumption.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let server_verifier = PeerVerifier {
            roots,
            algs: provider.signature_verification_algorithms,
        };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| tls_err("protocol versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(server_verifier))
            .with_client_auth_cert(cfg.chain.clone(), cfg.key.clone_key())
            .map_err(|e| tls_err("certificate and key", e))?;
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_sni = false;

        Ok(TlsContext {
            server: Arc::new(server),
            client: Arc::new(client),
            identity: cfg.identity.clone(),
            cluster_id,
        })
    }

    pub fn server_conn(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(self.server.clone())
    }

    pub fn client_conn(&self, addr: SocketAddr) -> Result<ClientConnection, rustls::Error> {
        // The peer is verified by the node id in its certificate, not by
        // a name; an IP server name sends no SNI.
        ClientConnection::new(self.client.clone(), ServerName::from(addr.ip()))
    }

    /// The node id the verified end-entity certificate names.
    pub fn peer_id(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<u64, TlsFailure> {
        let Some(cert) = certs.and_then(|c| c.first()) else {
            return Err(TlsFailure::NoCertificate);
        };
        let names = names::subject_alt_names(cert).map_err(|_| TlsFailure::NoIdentity)?;
        match &self.identity {
            PeerIdentity::SanUri => {
                let mut ids = names
                    .uris
                    .iter()
                    .filter_map(|u| names::node_id_from_uri(u, self.cluster_id));
                let first = ids.next().filter(|&id| id != 0);
                match first {
                    Some(id) if ids.all(|other| other == id) => Ok(id),
                    _ => Err(TlsFailure::NoIdentity),
                }
            }
            PeerIdentity::Custom(f) => {
                let cert = PeerCertificate {
                    der: cert,
                    dns: names.dns,
                    uris: names.uris,
                };
                let f = f.clone();
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cert))) {
                    Ok(Some(id)) if id != 0 => Ok(id),
                    _ => Err(TlsFailure::NoIdentity),
                }
            }
        }
    }
}

/// Classifies a rustls error for the counters and the log.
pub(crate) fn classify(e: &rustls::Error) -> TlsFailure {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })
        | E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            TlsFailure::Expired
        }
        E::InvalidCertificate(c) => TlsFailure::BadCertificate(format!("{c:?}")),
        E::NoCertificatesPresented => TlsFailure::NoCertificate,
        E::AlertReceived(a) => TlsFailure::RefusedByPeer(format!("{a:?}")),
        E::InvalidMessage(m) => TlsFailure::Other(format!("malformed TLS message: {m:?}")),
        other => TlsFailure::Other(other.to_string()),
    }
}

/// Verifies a server's chain against our CAs. The name check of ordinary
/// TLS is replaced by the node-id check the event loop makes once the
/// handshake is done (the certificate must name the node we dialed).
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with these URIs, as the peer's chain.
    fn cert(uris: &[&str]) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    fn ctx() -> TlsContext {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&key).unwrap();
        let cfg = TlsConfig::new(
            vec![ca.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            vec![ca.der().clone()],
        );
        TlsContext::build(&cfg, 7).unwrap()
    }

    #[test]
    fn a_certificate_names_one_node_of_the_cluster_or_none() {
        let ctx = ctx();
        let id = |uris: &[&str]| ctx.peer_id(Some(&[cert(uris)]));
        assert_eq!(id(&["raftwire://7/3"]), Ok(3));
        assert_eq!(id(&["raftwire://7/3", "raftwire://7/3"]), Ok(3));
        // Other clusters' URIs are not ours and do not count.
        assert_eq!(id(&["raftwire://8/4", "raftwire://7/3"]), Ok(3));
        for bad in [
            &["raftwire://7/3", "raftwire://7/4"][..],
            &["raftwire://7/3", "raftwire://7/3", "raftwire://7/4"],
            &["raftwire://7/0"],
            &["raftwire://8/3"],
            &[],
        ] {
            assert_eq!(id(bad), Err(TlsFailure::NoIdentity), "{bad:?}");
        }
        assert_eq!(ctx.peer_id(None), Err(TlsFailure::NoCertificate));
    }
}
