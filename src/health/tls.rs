//! TLS client policy of the `tls` health checks.
//!
//! These checks target the local HAProxy on a VIP, whose certificates are
//! often issued by an internal CA or are wildcard/self-signed test certs, and
//! the question they answer is "does this frontend complete a TLS handshake
//! and serve", not "would a browser trust it". So the policy is:
//!
//! - the handshake must complete: a peer that is not TLS, aborts, or offers
//!   nothing we support fails the check;
//! - the peer must prove possession of the key of the certificate it presents
//!   (handshake signatures are verified with the ring provider), so a broken
//!   certificate/key pairing fails;
//! - the chain is *not* verified against public or system roots, and the
//!   name and validity dates are not checked (certificate expiry is a
//!   monitoring concern, not a reason to withdraw anycast routes from every
//!   host at the same instant).
//!
//! The [`ClientConfig`] is built once and shared by every check through an
//! `Arc` (it is not cheap to build). Session resumption stays enabled (an
//! in-memory cache sized for a large host): at thousands of checks per second
//! a full handshake each time would cost HAProxy a private-key operation per
//! check, and a resumed handshake still exercises the frontend's TLS layer.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Sessions kept for resumption (one per SNI name; 1,000 VIPs fit easily).
const RESUMPTION_CACHE: usize = 4096;

/// Builds the shared client configuration described in the module docs.
pub(crate) fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(PossessionOnly {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(RESUMPTION_CACHE);
    Ok(Arc::new(config))
}

/// Accepts any certificate chain, but checks the handshake signatures made
/// with the presented certificate's key.
#[derive(Debug)]
struct PossessionOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PossessionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
