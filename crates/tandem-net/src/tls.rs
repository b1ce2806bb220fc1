//! Mutual TLS 1.3 pinned to node IDs: a peer is accepted only if the SHA-256 of the
//! certificate it presents is an ID we were given, and the handshake signature still has to
//! verify with that certificate's key (so presenting someone else's certificate does not work).

use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, Error as TlsError, SignatureScheme};

use crate::NetError;
use crate::identity::{Identity, NodeId};

/// ALPN protocol of Tandem sync.
pub const ALPN: &[u8] = b"tandem-sync/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The signature half of both verifiers, the same for either side of the handshake: TLS 1.2 is
/// refused (both configs allow only 1.3), and the TLS 1.3 handshake signature must verify with
/// the presented certificate's key, whoever it belongs to.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Err(TlsError::General("TLS 1.2 is not accepted".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Decides whether a node ID may connect; told about those it refused.
pub(crate) type Admit = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

#[derive(Debug)]
struct ServerVerifier {
    provider: Arc<CryptoProvider>,
    expected: NodeId,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let got = NodeId::of_certificate(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "peer presented node ID {got}, expected {}",
                self.expected
            )))
        }
    }

    signature_checks!();
}

struct ClientVerifier {
    provider: Arc<CryptoProvider>,
    admit: Admit,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let id = NodeId::of_certificate(end_entity);
        if (self.admit)(id) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "node {id} is not a configured peer"
            )))
        }
    }

    signature_checks!();
}

/// Client side: connect to the node that must have ID `expected`, presenting `identity`.
pub fn client_config(
    identity: &Identity,
    expected: NodeId,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier { provider, expected }))
        .with_client_auth_cert(vec![identity.cert()], identity.key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport());
    Ok(c)
}

/// Server side: accept clients for which `admit` says yes, presenting `identity`.
pub(crate) fn server_config(
    identity: &Identity,
    admit: Admit,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ClientVerifier { provider, admit }))
        .with_single_cert(vec![identity.cert()], identity.key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(quic));
    s.transport_config(transport());
    Ok(s)
}

/// Keep-alive well inside the idle timeout, so a quiet but healthy link stays up and a dead one
/// is noticed within seconds.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// The node ID of the peer on an established connection.
pub(crate) fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| NodeId::of_certificate(c))
}
