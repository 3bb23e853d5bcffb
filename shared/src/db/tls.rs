//! TLS to PostgreSQL with rustls (RDS for PostgreSQL 15+ rejects unencrypted connections by
//! default), following libpq's `sslmode` meaning:
//!
//! - `sslmode=disable` / `prefer` (the default): no TLS is attempted.
//! - `sslmode=require` (and always for a `DB_SECRET_ARN`, since that is RDS): TLS is required.
//!   The server certificate is verified (chain and host name) when a root certificate bundle is
//!   given in `PGSSLROOTCERT` (libpq's variable; for RDS, the region's `global-bundle.pem`),
//!   as libpq does when a root file exists (libpq's `verify-full`); otherwise the connection is
//!   encrypted but the certificate is not checked, like libpq's `require`, with one difference:
//!   such an unverified connection refuses a server that asks for the password in clear text.
//! - SCRAM uses channel binding (`tls-server-end-point`) whenever the server offers it
//!   (`channel_binding=require` in the URL makes it mandatory).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::DbError;

/// Builds the client TLS configuration: verifying against the PEM bundle at `root_cert`, or
/// encrypting without verification (libpq's `require`) when there is none.
pub fn client_config(root_cert: Option<&Path>) -> Result<ClientConfig, DbError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("TLS set-up: {e}")))?;
    let config = match root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    DbError::Config(format!(
                        "PGSSLROOTCERT={}: cannot read PEM certificates: {e}",
                        path.display()
                    ))
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DbError::Config(format!(
                    "PGSSLROOTCERT={} holds no usable CA certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// libpq's `sslmode=require` without a root file: any certificate is accepted, but the
/// handshake signatures are still checked (so the session keys are the server's).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A `tokio_postgres` TLS connector backed by rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    verified: bool,
}

impl MakeRustls {
    /// Wraps a client configuration that verifies the server certificate.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            verified: true,
        }
    }

    /// The connector for a root bundle or none (see [`client_config`]): without one the server
    /// is not verified, and such a connection refuses to send a cleartext password.
    pub fn for_root_cert(root_cert: Option<&Path>) -> Result<Self, DbError> {
        Ok(Self {
            config: Arc::new(client_config(root_cert)?),
            verified: root_cert.is_some(),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS server name {domain:?}: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            name,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            verified: self.verified,
        })
    }
}

/// Connects one socket (see [`MakeRustls`]).
pub struct RustlsConnect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    verified: bool,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            Ok(RustlsStream {
                tls: self.connector.connect(self.name, stream).await?,
                probe: (!self.verified).then_some(AuthProbe::default()),
            })
        })
    }
}

/// A TLS session to the server.
pub struct RustlsStream<S> {
    tls: tokio_rustls::client::TlsStream<S>,
    /// On an unverified session: watches the server's first message, to refuse a request for the
    /// password in clear text (anyone in the middle could be asking).
    probe: Option<AuthProbe>,
}

/// The first 9 bytes the server sends after the handshake: an `Authentication` message.
#[derive(Default)]
struct AuthProbe {
    head: [u8; 9],
    len: usize,
}

/// `R`, length 8, code 3: AuthenticationCleartextPassword.
const CLEARTEXT_REQUEST: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 3];

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tls).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(probe)) = (&polled, this.probe.as_mut()) {
            let new = &buf.filled()[before..];
            let take = (probe.head.len() - probe.len).min(new.len());
            probe.head[probe.len..probe.len + take].copy_from_slice(&new[..take]);
            probe.len += take;
            if probe.len == probe.head.len() || new.is_empty() {
                let cleartext = probe.head == CLEARTEXT_REQUEST;
                this.probe = None;
                if cleartext {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the server asked for the password in clear text over a TLS connection \
                         whose certificate is not verified: refused (set PGSSLROOTCERT to the \
                         server's CA bundle, or use scram-sha-256 on the server)",
                    )));
                }
            }
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM-SHA-256-PLUS with tls-server-end-point (RFC 5929): the hash of the server's
        // certificate, so a SCRAM exchange cannot be relayed through another TLS session.
        let cert = self
            .tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first());
        match cert.and_then(|c| server_end_point(c.as_ref())) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The tls-server-end-point value of a DER certificate: its hash with the certificate's own
/// signature hash, SHA-256 when that is MD5, SHA-1 or SHA-256 (RFC 5929, section 4.1).
fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // sha384WithRSAEncryption, sha512WithRSAEncryption, ecdsa-with-SHA384, ecdsa-with-SHA512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm_oid(der)?;
    Some(if SHA384.contains(&oid) {
        sha2::Sha384::digest(der).to_vec()
    } else if SHA512.contains(&oid) {
        sha2::Sha512::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    })
}

/// The OID of `Certificate.signatureAlgorithm` (SEQUENCE { tbsCertificate, signatureAlgorithm,
/// signature }), by walking the DER headers.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    /// (tag, content, rest) of the TLV at the start of `b`.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (_, certificate, _) = tlv(der)?;
    let (_, _tbs, rest) = tlv(certificate)?;
    let (_, algorithm, _) = tlv(rest)?;
    let (tag, oid, _) = tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_only_config_builds_and_a_missing_root_file_is_named(
    ) -> Result<(), Box<dyn std::error::Error>> {
        client_config(None)?;
        let err = client_config(Some(Path::new("/nonexistent/root.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.pem"), "{err}");
        Ok(())
    }
}
