//! HTTPS to a receiver whose certificate the lab's own CA signed
//! (`--ca-cert`), whatever the device's clock says.
//!
//! A Pi without a real-time clock may believe it is 1970, or the day it was
//! last shut down, or years ahead: checked against that clock, a perfectly
//! good certificate is "not valid yet" or "expired", and the device could
//! never deliver (and never learn the receiver's time, which the signed
//! protocol would give it). So for a pinned CA the chain, the receiver's
//! name, the key usages and every signature are checked as usual, but a
//! validity period that the device's clock falls outside of is not held
//! against it. What this gives up is expiry as a way to retire a receiver
//! key: with a private CA, retire one by making a new CA (SECURITY.md).
//! With the system's roots (no `--ca-cert`) nothing changes.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A rustls configuration trusting only the CA certificates in `pem`.
pub fn client_config(pem: &[u8]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("it holds no PEM certificate".to_owned());
    }
    let provider = Arc::new(aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyClock { inner }))
        .with_no_client_auth())
}

/// The standard verifier, asked again at a moment inside the validity
/// period it found the device's clock outside of.
#[derive(Debug)]
struct AnyClock {
    inner: Arc<WebPkiServerVerifier>,
}

/// Each certificate of a chain (the receiver's, an intermediate, the CA)
/// may move the moment once; past that the chain's periods do not overlap.
const MOMENTS: usize = 4;

impl ServerCertVerifier for AnyClock {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut at = now;
        for _ in 0..MOMENTS {
            match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at) {
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { not_before, .. })) => {
                    at = not_before;
                }
                Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { not_after, .. })) => {
                    at = not_after;
                }
                verdict => return verdict,
            }
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            std::io::Error::other("the validity periods of the receiver's certificate chain do not overlap"),
        )))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_without_certificates_is_refused() {
        assert!(super::client_config(b"not a certificate").is_err());
    }
}
