//! Pinned mutual TLS for hops: self-signed Ed25519 certificates, SPKI pins, no CA anywhere.
//!
//! Both verifiers compare the peer's SubjectPublicKeyInfo with the pins **exactly**, and still
//! verify the TLS 1.3 handshake signature with the pinned key, so holding a certificate with
//! the right SPKI is not enough: the peer must also hold the private key. TLS 1.2 is not
//! offered; only Ed25519 signatures are accepted.

use crate::HopError;
use ed25519_dalek::{Signer as _, SigningKey};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32-byte key follows.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Length of an Ed25519 SPKI.
pub const ED25519_SPKI_LEN: usize = 44;
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The SPKI of an Ed25519 public key.
pub fn ed25519_spki(public: &[u8; 32]) -> [u8; ED25519_SPKI_LEN] {
    let mut out = [0u8; ED25519_SPKI_LEN];
    let (prefix, key) = out.split_at_mut(ED25519_SPKI_PREFIX.len());
    prefix.copy_from_slice(&ED25519_SPKI_PREFIX);
    key.copy_from_slice(public);
    out
}

/// SHA-256 of an SPKI: what relay allow lists hold.
pub fn spki_hash(spki: &[u8]) -> [u8; 32] {
    Sha256::digest(spki).into()
}

/// A hop key: an Ed25519 key used only for the outer TLS of hops.
///
/// Its certificate and rustls signing key ([`HopKey::certified_key`]) are made once, on first
/// use, and shared by every clone: each dial and listener built from this key reuses them
/// instead of copying the seed into fresh key material.
#[derive(Clone)]
pub struct HopKey {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    tls: Arc<OnceLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for HopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HopKey(public={:02x?}.., secret=[redacted])",
            &self.public[..4]
        )
    }
}

impl HopKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self, HopError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| HopError::Local(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// The key with this 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
        HopKey {
            seed: Zeroizing::new(*seed),
            public,
            tls: Arc::new(OnceLock::new()),
        }
    }

    /// The secret seed (to store encrypted at rest).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The raw Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The SPKI peers pin.
    pub fn spki(&self) -> [u8; ED25519_SPKI_LEN] {
        ed25519_spki(&self.public)
    }

    /// A fresh self-signed certificate for this key (signed with a zeroizing copy of the key;
    /// rcgen never sees the seed).
    pub fn certificate(&self) -> Result<CertificateDer<'static>, HopError> {
        let signer = CertSigner {
            key: SigningKey::from_bytes(&self.seed),
            public: self.public,
        };
        let params =
            rcgen::CertificateParams::new(vec![liaison_wire::consts::HOP_SERVER_NAME.to_string()])
                .map_err(|e| HopError::Local(format!("certificate params: {e}")))?;
        let cert = params
            .self_signed(&signer)
            .map_err(|e| HopError::Local(format!("self-signing: {e}")))?;
        Ok(cert.der().clone())
    }

    /// The certificate and rustls signing key of this key, made on first use and shared by
    /// every clone (what TLS configs built from this key present).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, HopError> {
        if let Some(k) = self.tls.get() {
            return Ok(Arc::clone(k));
        }
        // two first uses at once may both build one; the first stored is the one kept
        let built = Arc::new(self.build_certified_key()?);
        Ok(Arc::clone(self.tls.get_or_init(|| built)))
    }

    fn build_certified_key(&self) -> Result<CertifiedKey, HopError> {
        let cert = self.certificate()?;
        // the PKCS#8 form rustls parses, in a buffer wiped on drop (ring keeps its own copy in
        // the signing key, made once per hop key)
        let mut der = Zeroizing::new([0u8; ED25519_PKCS8_PREFIX.len() + 32]);
        let (prefix, seed) = der.split_at_mut(ED25519_PKCS8_PREFIX.len());
        prefix.copy_from_slice(&ED25519_PKCS8_PREFIX);
        seed.copy_from_slice(self.seed.as_slice());
        let signer =
            rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(der.as_slice()))
                .map_err(|e| HopError::Local(format!("hop key: {e}")))?;
        let key = CertifiedKey::new(vec![cert], signer);
        key.keys_match()
            .map_err(|e| HopError::Local(format!("hop certificate: {e}")))?;
        Ok(key)
    }
}

/// Signs the hop certificate for rcgen with ed25519-dalek (whose key is wiped on drop).
struct CertSigner {
    key: SigningKey,
    public: [u8; 32],
}

impl rcgen::PublicKeyData for CertSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for CertSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(msg).to_bytes().to_vec())
    }
}

/// The crypto provider of every hop: ring, TLS 1.3 suites only (made once per process).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

fn ed25519_only() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Verifies a TLS 1.3 handshake signature, accepting Ed25519 only.
fn verify13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

fn cert_spki(cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    Ok(parsed.subject_public_key_info().as_ref().to_vec())
}

/// The SPKI of a certificate, if it parses.
pub fn certificate_spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    cert_spki(cert).ok()
}

/// Decides which client SPKIs a server accepts. Called during the TLS handshake.
pub trait ClientPins: Send + Sync + fmt::Debug {
    /// True if a client presenting this SPKI may complete the handshake.
    fn allows(&self, spki: &[u8]) -> bool;
}

/// Server side: requires a client certificate whose SPKI the pins allow.
#[derive(Debug)]
pub struct PinnedClientVerifier {
    pins: Arc<dyn ClientPins>,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedClientVerifier {
    /// A verifier consulting `pins`.
    pub fn new(pins: Arc<dyn ClientPins>) -> Self {
        PinnedClientVerifier {
            pins,
            algs: ed25519_only(),
        }
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let spki = cert_spki(end_entity)?;
        if self.pins.allows(&spki) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Client side: the server must present exactly the pinned SPKI.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    spki: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    /// A verifier accepting only `spki`.
    pub fn new(spki: &[u8]) -> Self {
        PinnedServerVerifier {
            spki: spki.to_vec(),
            algs: ed25519_only(),
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = cert_spki(end_entity)?;
        if spki == self.spki {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
