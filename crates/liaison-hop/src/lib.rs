//! Liaison hops: the outer QUIC envelope between two nodes or between a node and a relay.
//!
//! A hop is quinn 0.11 + rustls 0.23 (ring), TLS 1.3 only, ALPN `liaison/1`, mutual TLS with
//! self-signed Ed25519 certificates pinned by SPKI ([`tls`]). No CA, no 0-RTT (the rustls
//! server config is built by hand, so `max_early_data_size` stays 0), Retry for every
//! unvalidated client address ([`accept_validated`]), then per-address admission of the
//! validated ones ([`admission`]), bounded streams, windows and idle time ([`HopLimits`]).
//!
//! On the hop's one bidirectional stream the client sends `HELLO` and the server answers
//! `READY` once it has accepted the client; only then is the hop up (a client whose
//! certificate was refused still sees quinn's `connect()` succeed, and learns of the refusal
//! later). After that both sides exchange hop frames ([`liaison_wire::hop`]) with
//! [`HopReader`] / [`HopWriter`], which check every length before allocating.
//!
//! This crate carries no session-key code: identity comes from the Noise layer above it.

pub mod admission;
pub mod tls;

use liaison_wire::consts::{ALPN, HOP_SERVER_NAME, PROTOCOL_VERSION};
use liaison_wire::hop::{self, HopFrame};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
pub use tls::{ClientPins, HopKey, ed25519_spki, spki_hash};

/// A hop failure. Details are for the local log; peers only see coarse close codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HopError {
    /// The peer sent bytes that are not a hop frame.
    #[error("malformed hop frame: {0}")]
    Malformed(#[from] hop::HopError),
    /// The peer broke the hop protocol (wrong first frame, version...).
    #[error("hop protocol violation: {0}")]
    Protocol(String),
    /// The peer refused us with an ERR frame.
    #[error("refused by the peer: {}", liaison_wire::hop::err::name(*.0))]
    Refused(u16),
    /// QUIC connect failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Reading the stream failed.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing the stream failed.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Nothing happened in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A local failure (configuration, keys, sockets).
    #[error("{0}")]
    Local(String),
}

impl HopError {
    /// True when the peer (or the path to it) refused the hop's TLS handshake, typically
    /// because our key is not pinned or allowed there.
    pub fn is_tls_refusal(&self) -> bool {
        let conn = match self {
            HopError::Connection(c) => c,
            HopError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
                c,
            )))
            | HopError::Write(quinn::WriteError::ConnectionLost(c)) => c,
            _ => return false,
        };
        // QUIC CRYPTO_ERROR codes are 0x100 + the TLS alert (RFC 9001 §4.8)
        let code = match conn {
            quinn::ConnectionError::TransportError(t) => u64::from(t.code),
            quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
            _ => return false,
        };
        (0x100..0x200).contains(&code)
    }
}

/// Limits of a hop's QUIC transport.
#[derive(Debug, Clone)]
pub struct HopLimits {
    /// Close a connection after this long without any packet.
    pub idle_timeout: Duration,
    /// Send a QUIC PING after this long without sending (client side), `None` to never.
    pub keep_alive: Option<Duration>,
    /// Flow-control window per stream, bytes.
    pub stream_window: u32,
    /// Flow-control window per connection, bytes.
    pub connection_window: u32,
    /// Most bidirectional streams the peer may open at once.
    pub max_bidi_streams: u32,
    /// How long a new hop may take to say `HELLO` / `READY`.
    pub hello_timeout: Duration,
    /// The congestion controller of the hop's QUIC connection.
    pub congestion: Congestion,
}

/// A QUIC congestion controller (quinn's implementations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBR: paces by measured bandwidth and round trip instead of halving its window at every
    /// loss, so a line on a path that drops one packet in five still moves (CUBIC collapses
    /// there) and its queues stay short. It costs CPU per byte (pacing): on loopback, bulk
    /// transfers run at about half of CUBIC's rate (`docs/performance.md`). The default.
    #[default]
    Bbr,
    /// CUBIC, quinn's own default: the fastest on a clean path, slow to recover from loss.
    Cubic,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            other => Err(format!(
                "unknown congestion controller {other:?} (bbr or cubic)"
            )),
        }
    }
}

impl Default for HopLimits {
    fn default() -> Self {
        HopLimits {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            stream_window: 4 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            max_bidi_streams: 1,
            hello_timeout: Duration::from_secs(10),
            congestion: Congestion::default(),
        }
    }
}

impl HopLimits {
    fn transport(&self) -> Result<quinn::TransportConfig, HopError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| HopError::Local(format!("idle timeout: {e}")))?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.connection_window))
            .datagram_receive_buffer_size(None);
        match self.congestion {
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
        };
        Ok(t)
    }
}

/// Server configuration: our certificate, client certificates checked against `pins`.
pub fn server_config(
    key: &HopKey,
    pins: Arc<dyn ClientPins>,
    limits: &HopLimits,
) -> Result<quinn::ServerConfig, HopError> {
    let ours = rustls::sign::SingleCertAndKey::from(key.certified_key()?);
    let mut tls = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| HopError::Local(format!("tls: {e}")))?
        .with_client_cert_verifier(Arc::new(tls::PinnedClientVerifier::new(pins)))
        .with_cert_resolver(Arc::new(ours));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_half_rtt_data = false;
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| HopError::Local(format!("quic tls: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(limits.transport()?));
    cfg.migration(false);
    Ok(cfg)
}

/// Client configuration: our certificate, the server must present `server_spki`. Only the
/// pin and the configs are made per call: the key's certificate and signing key are the ones
/// [`HopKey::certified_key`] made once.
pub fn client_config(
    key: &HopKey,
    server_spki: &[u8],
    limits: &HopLimits,
) -> Result<quinn::ClientConfig, HopError> {
    let ours = rustls::sign::SingleCertAndKey::from(key.certified_key()?);
    let mut tls = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| HopError::Local(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::PinnedServerVerifier::new(server_spki)))
        .with_client_cert_resolver(Arc::new(ours));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| HopError::Local(format!("quic tls: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(limits.transport()?));
    Ok(cfg)
}

/// A client-only endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(peer: SocketAddr) -> Result<Endpoint, HopError> {
    let bind: SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    Endpoint::client(bind).map_err(|e| HopError::Local(format!("cannot open a UDP socket: {e}")))
}

/// A server endpoint bound to `addr` (it can also make client connections).
pub fn server_endpoint(addr: SocketAddr, cfg: quinn::ServerConfig) -> Result<Endpoint, HopError> {
    Endpoint::server(cfg, addr).map_err(|e| HopError::Local(format!("cannot bind {addr}: {e}")))
}

/// A server endpoint whose QUIC stateless-reset key is derived from `key`, so that after a
/// crash and restart on the same port it resets peers' stale connections at once (RFC 9000
/// §10.3) instead of leaving them to time out.
pub fn server_endpoint_keyed(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
    key: &HopKey,
) -> Result<Endpoint, HopError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"liaison/1 quic-stateless-reset");
    h.update(key.seed());
    let secret: [u8; 32] = h.finalize().into();
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut ep_cfg = quinn::EndpointConfig::new(Arc::new(reset));
    // connection ids must also validate after a restart, or packets for old connections are
    // dropped before a reset is considered
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(secret.get(..8).unwrap_or(&[0; 8]));
    let cid_key = u64::from_le_bytes(cid_key);
    ep_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(addr)
        .map_err(|e| HopError::Local(format!("cannot bind {addr}: {e}")))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| HopError::Local("no async runtime for QUIC".into()))?;
    Endpoint::new(ep_cfg, Some(cfg), socket, runtime)
        .map_err(|e| HopError::Local(format!("cannot bind {addr}: {e}")))
}

/// The next incoming connection attempt whose address is validated. Unvalidated attempts are
/// answered with a QUIC Retry (stateless), so spoofed sources cost the server nothing.
/// Returns `None` when the endpoint is closed.
pub async fn accept_validated(endpoint: &Endpoint) -> Option<Incoming> {
    loop {
        let incoming = endpoint.accept().await?;
        if incoming.remote_address_validated() {
            return Some(incoming);
        }
        if incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                tracing::debug!("retry failed: {e}");
            }
        } else {
            incoming.ignore();
        }
    }
}

/// The SPKI the peer authenticated with, if any.
pub fn peer_spki(conn: &Connection) -> Option<Vec<u8>> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::certificate_spki(certs.first()?)
}

/// An established hop: the connection and its stream.
#[derive(Debug)]
pub struct Hop {
    /// The QUIC connection.
    pub conn: Connection,
    /// Reads hop frames.
    pub reader: HopReader,
    /// Writes hop frames.
    pub writer: HopWriter,
}

/// [`connect`], racing: while no attempt has finished, a further one starts every `every`
/// (at most `max` in all), and the first to succeed wins (the others are dropped). A QUIC
/// connection attempt begun during an outage retransmits its first packet with an exponential
/// backoff; a fresh attempt probes at once, so the hop is back about a round trip after the
/// path is. An error is returned once every attempt has failed.
pub async fn connect_racing(
    endpoint: &Endpoint,
    addr: SocketAddr,
    key: &HopKey,
    server_spki: &[u8],
    limits: &HopLimits,
    every: Duration,
    max: usize,
) -> Result<Hop, HopError> {
    let mut set = tokio::task::JoinSet::new();
    let spawn = |set: &mut tokio::task::JoinSet<Result<Hop, HopError>>| {
        let (endpoint, key, spki, limits) = (
            endpoint.clone(),
            key.clone(),
            server_spki.to_vec(),
            limits.clone(),
        );
        set.spawn(async move { connect(&endpoint, addr, &key, &spki, &limits).await });
    };
    spawn(&mut set);
    let mut started = 1;
    let mut last_err = None;
    loop {
        let next = tokio::time::sleep(every);
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(Ok(hop))) => {
                    set.abort_all();
                    return Ok(hop);
                }
                Some(Ok(Err(e))) => last_err = Some(e),
                Some(Err(e)) => last_err = Some(HopError::Local(format!("connect task: {e}"))),
                None => {}
            },
            _ = next, if started < max => {
                spawn(&mut set);
                started += 1;
            }
        }
        if set.is_empty() {
            return Err(last_err.unwrap_or(HopError::Timeout("connecting")));
        }
    }
}

/// Connects to a server pinned by `server_spki`, sends `HELLO` and waits for `READY`.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    key: &HopKey,
    server_spki: &[u8],
    limits: &HopLimits,
) -> Result<Hop, HopError> {
    let cfg = client_config(key, server_spki, limits)?;
    let connecting = endpoint.connect_with(cfg, addr, HOP_SERVER_NAME)?;
    let conn = tokio::time::timeout(limits.hello_timeout, connecting)
        .await
        .map_err(|_| HopError::Timeout("connecting"))??;
    let (send, recv) = conn.open_bi().await?;
    let mut writer = HopWriter::new(send);
    let mut reader = HopReader::new(recv);
    writer
        .send(&HopFrame::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
    let first = tokio::time::timeout(limits.hello_timeout, reader.next())
        .await
        .map_err(|_| HopError::Timeout("waiting for READY"));
    let first = match first {
        Ok(f) => f,
        Err(e) => {
            conn.close(VarInt::from_u32(0), b"timeout");
            return Err(e);
        }
    };
    match first? {
        Some(HopFrame::Ready { version }) if version == PROTOCOL_VERSION => {}
        Some(HopFrame::Ready { version }) => {
            return Err(HopError::Protocol(format!(
                "server speaks protocol version {version}"
            )));
        }
        Some(HopFrame::Err { code, .. }) => return Err(HopError::Refused(code)),
        Some(_) => return Err(HopError::Protocol("expected READY".into())),
        None => return Err(HopError::Protocol("stream closed before READY".into())),
    }
    Ok(Hop {
        conn,
        reader,
        writer,
    })
}

/// Server side of a new connection: waits for the client's stream and `HELLO`. The caller
/// decides whether to accept and then calls [`HopWriter::send`] with `READY` (or `ERR`).
pub async fn accept_stream(
    conn: &Connection,
    limits: &HopLimits,
) -> Result<(HopReader, HopWriter), HopError> {
    let (send, recv) = tokio::time::timeout(limits.hello_timeout, conn.accept_bi())
        .await
        .map_err(|_| HopError::Timeout("waiting for the client's stream"))??;
    let mut reader = HopReader::new(recv);
    let writer = HopWriter::new(send);
    let hello = tokio::time::timeout(limits.hello_timeout, reader.next())
        .await
        .map_err(|_| HopError::Timeout("waiting for HELLO"))??;
    match hello {
        Some(HopFrame::Hello { version }) if version == PROTOCOL_VERSION => Ok((reader, writer)),
        Some(HopFrame::Hello { version }) => Err(HopError::Protocol(format!(
            "client speaks protocol version {version}"
        ))),
        _ => Err(HopError::Protocol("expected HELLO".into())),
    }
}

/// Reads hop frames from a QUIC stream into a reused buffer.
///
/// [`HopReader::next`] is cancel-safe: a frame half read when its future is dropped (a
/// `select!` taking another branch) is completed by the next call, never lost, so the stream
/// cannot fall out of step with its frames.
#[derive(Debug)]
pub struct HopReader {
    recv: RecvStream,
    buf: Vec<u8>,
    len: [u8; 4],
    /// Bytes of the current frame read so far: the length prefix, then the body.
    got_len: usize,
    got_body: usize,
    /// The body's length, once the prefix is in.
    body_len: Option<usize>,
}

impl HopReader {
    /// Wraps a receive stream.
    pub fn new(recv: RecvStream) -> Self {
        HopReader {
            recv,
            buf: Vec::new(),
            len: [0; 4],
            got_len: 0,
            got_body: 0,
            body_len: None,
        }
    }

    /// The next frame, or `None` at a clean end of stream (between frames).
    pub async fn next(&mut self) -> Result<Option<HopFrame<'_>>, HopError> {
        // `RecvStream::read` consumes nothing unless it returns data, and every position is
        // kept in `self`: dropping this future at any await loses no byte
        while self.body_len.is_none() {
            let dst = self.len.get_mut(self.got_len..).unwrap_or_default();
            match self.recv.read(dst).await {
                Ok(Some(n)) => self.got_len += n,
                Ok(None) if self.got_len == 0 => return Ok(None),
                Ok(None) => {
                    return Err(HopError::Read(quinn::ReadExactError::FinishedEarly(
                        self.got_len,
                    )));
                }
                Err(e) => return Err(HopError::Read(quinn::ReadExactError::ReadError(e))),
            }
            if self.got_len == 4 {
                let n = hop::check_len(u32::from_le_bytes(self.len))?;
                self.buf.resize(n, 0);
                self.body_len = Some(n);
                self.got_body = 0;
            }
        }
        let n = self.body_len.unwrap_or(0);
        while self.got_body < n {
            let dst = self.buf.get_mut(self.got_body..n).unwrap_or_default();
            match self.recv.read(dst).await {
                Ok(Some(k)) => self.got_body += k,
                Ok(None) => {
                    return Err(HopError::Read(quinn::ReadExactError::FinishedEarly(
                        self.got_body,
                    )));
                }
                Err(e) => return Err(HopError::Read(quinn::ReadExactError::ReadError(e))),
            }
        }
        self.got_len = 0;
        self.got_body = 0;
        self.body_len = None;
        Ok(Some(HopFrame::parse(
            self.buf.get(..n).unwrap_or_default(),
        )?))
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut RecvStream {
        &mut self.recv
    }
}

/// Writes hop frames to a QUIC stream.
#[derive(Debug)]
pub struct HopWriter {
    send: SendStream,
    buf: Vec<u8>,
}

impl HopWriter {
    /// Wraps a send stream.
    pub fn new(send: SendStream) -> Self {
        HopWriter {
            send,
            buf: Vec::new(),
        }
    }

    /// Encodes and writes one frame.
    pub async fn send(&mut self, frame: &HopFrame<'_>) -> Result<(), HopError> {
        self.buf.clear();
        frame.encode_into(&mut self.buf);
        self.send.write_all(&self.buf).await?;
        Ok(())
    }

    /// Writes bytes that already hold complete encoded frames.
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> Result<(), HopError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Writes every frame still queued in `queue` (without waiting for more), finishes the
    /// stream and waits up to `grace` for the peer to acknowledge all of it. For a clean
    /// shutdown: closing the connection at once would discard data not yet acknowledged.
    pub async fn drain_and_finish(
        &mut self,
        queue: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
        grace: std::time::Duration,
    ) {
        let drain = async {
            while let Ok(frame) = queue.try_recv() {
                if self.send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let _ = self.send.finish();
            let _ = self.send.stopped().await;
        };
        let _ = tokio::time::timeout(grace, drain).await;
    }

    /// Finishes the stream (no more frames).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut SendStream {
        &mut self.send
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Set(Mutex<HashSet<Vec<u8>>>);
    impl ClientPins for Set {
        fn allows(&self, spki: &[u8]) -> bool {
            self.0.lock().unwrap().contains(spki)
        }
    }

    /// The QUIC error code a failed hop ended with (transport or application).
    fn close_code(err: &HopError) -> Option<u64> {
        let conn = match err {
            HopError::Connection(c)
            | HopError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
                c,
            )))
            | HopError::Write(quinn::WriteError::ConnectionLost(c)) => c,
            _ => return None,
        };
        match conn {
            quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
            quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
            _ => None,
        }
    }

    async fn serve(endpoint: Endpoint, limits: HopLimits) {
        while let Some(inc) = accept_validated(&endpoint).await {
            let limits = limits.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.accept().unwrap().await else {
                    return;
                };
                let (mut r, mut w) = accept_stream(&conn, &limits).await.unwrap();
                w.send(&HopFrame::Ready { version: 1 }).await.unwrap();
                while let Ok(Some(f)) = r.next().await {
                    if let HopFrame::Blob(b) = f {
                        let b = b.to_vec();
                        w.send(&HopFrame::Blob(&b)).await.unwrap();
                    }
                }
            });
        }
    }

    /// An echo server on 127.0.0.1 that pins `client` alone: its key and address.
    fn echo_server(client: &HopKey, limits: &HopLimits) -> (HopKey, SocketAddr) {
        let server_key = HopKey::generate().unwrap();
        let pins = Arc::new(Set::default());
        pins.0.lock().unwrap().insert(client.spki().to_vec());
        let cfg = server_config(&server_key, pins, limits).unwrap();
        let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(serve(ep, limits.clone()));
        (server_key, addr)
    }

    #[test]
    fn congestion_controllers_parse_by_name() {
        assert_eq!("bbr".parse::<Congestion>(), Ok(Congestion::Bbr));
        assert_eq!("cubic".parse::<Congestion>(), Ok(Congestion::Cubic));
        assert!(
            "reno"
                .parse::<Congestion>()
                .unwrap_err()
                .contains("bbr or cubic")
        );
        assert_eq!(HopLimits::default().congestion, Congestion::Bbr);
    }

    /// Each congestion controller carries a hop (1 MiB one way, echoed back in one frame).
    #[tokio::test]
    async fn both_congestion_controllers_carry_a_hop() {
        for congestion in [Congestion::Bbr, Congestion::Cubic] {
            let client_key = HopKey::generate().unwrap();
            let limits = HopLimits {
                congestion,
                ..HopLimits::default()
            };
            let (server_key, addr) = echo_server(&client_key, &limits);
            let cep = client_endpoint(addr).unwrap();
            let mut hop = connect(&cep, addr, &client_key, &server_key.spki(), &limits)
                .await
                .unwrap();
            let blob = vec![0x42u8; 60_000];
            for _ in 0..16 {
                hop.writer.send(&HopFrame::Blob(&blob)).await.unwrap();
                assert_eq!(
                    hop.reader.next().await.unwrap(),
                    Some(HopFrame::Blob(&blob[..])),
                    "{congestion:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn pinned_mutual_tls_echo_and_refusals() {
        let client_key = HopKey::generate().unwrap();
        let stranger = HopKey::generate().unwrap();
        let limits = HopLimits::default();
        let (server_key, addr) = echo_server(&client_key, &limits);

        let cep = client_endpoint(addr).unwrap();
        let mut hop = connect(&cep, addr, &client_key, &server_key.spki(), &limits)
            .await
            .unwrap();
        assert_eq!(
            peer_spki(&hop.conn).unwrap(),
            server_key.spki().to_vec(),
            "client sees the pinned server key"
        );
        hop.writer.send(&HopFrame::Blob(b"hello")).await.unwrap();
        assert_eq!(
            hop.reader.next().await.unwrap(),
            Some(HopFrame::Blob(b"hello"))
        );

        // a client key the server never pinned: the hop never becomes ready
        let err = connect(&cep, addr, &stranger, &server_key.spki(), &limits)
            .await
            .unwrap_err();
        assert!(err.is_tls_refusal(), "{err:?}");
        // docs/protocol.md §5.4: CRYPTO_ERROR 0x100 + TLS alert 49 (access_denied), sent by
        // the server
        assert!(
            matches!(
                &err,
                HopError::Read(quinn::ReadExactError::ReadError(
                    quinn::ReadError::ConnectionLost(quinn::ConnectionError::ConnectionClosed(_))
                )) | HopError::Write(quinn::WriteError::ConnectionLost(
                    quinn::ConnectionError::ConnectionClosed(_)
                )) | HopError::Connection(quinn::ConnectionError::ConnectionClosed(_))
            ),
            "{err:?}"
        );
        assert_eq!(close_code(&err), Some(0x131), "{err:?}");

        // a server that does not hold the pinned key is refused by the client
        let err = connect(&cep, addr, &client_key, &stranger.spki(), &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, HopError::Connection(_)), "{err:?}");
        // the client's own TLS stack aborts with the same alert
        assert_eq!(close_code(&err), Some(0x131), "{err:?}");
    }

    /// A hop key's certificate and signing key are made once and shared by every TLS config
    /// built from the key or its clones (a dial copies no secret), while the server pin is
    /// still each dial's own: a dial pinned to another key fails.
    #[tokio::test]
    async fn dials_share_the_key_material_and_still_check_their_pin() {
        let client_key = HopKey::generate().unwrap();
        let stranger = HopKey::generate().unwrap();
        let limits = HopLimits::default();
        let (server_key, addr) = echo_server(&client_key, &limits);

        let ours = client_key.certified_key().unwrap();
        assert!(Arc::ptr_eq(&ours, &client_key.certified_key().unwrap()));
        assert!(Arc::ptr_eq(
            &ours,
            &client_key.clone().certified_key().unwrap()
        ));
        let other = HopKey::from_seed(client_key.seed())
            .certified_key()
            .unwrap();
        assert!(!Arc::ptr_eq(&ours, &other), "the cache belongs to one key");
        let held = Arc::strong_count(&ours);
        let a = client_config(&client_key, &server_key.spki(), &limits).unwrap();
        let b = client_config(&client_key.clone(), &stranger.spki(), &limits).unwrap();
        assert_eq!(
            Arc::strong_count(&ours),
            held + 2,
            "both configs present the one cached key"
        );
        drop((a, b));
        assert_eq!(Arc::strong_count(&ours), held);

        let cep = client_endpoint(addr).unwrap();
        for _ in 0..2 {
            let mut hop = connect(&cep, addr, &client_key, &server_key.spki(), &limits)
                .await
                .unwrap();
            hop.writer.send(&HopFrame::Blob(b"again")).await.unwrap();
            assert_eq!(
                hop.reader.next().await.unwrap(),
                Some(HopFrame::Blob(&b"again"[..]))
            );
        }
        let err = connect(&cep, addr, &client_key, &stranger.spki(), &limits)
            .await
            .unwrap_err();
        assert_eq!(close_code(&err), Some(0x131), "{err:?}");
        assert!(Arc::ptr_eq(&ours, &client_key.certified_key().unwrap()));
    }

    #[test]
    fn spki_layout() {
        let k = HopKey::from_seed(&[7; 32]);
        let spki = k.spki();
        assert_eq!(&spki[..12], &tls::ED25519_SPKI_PREFIX);
        let cert = k.certificate().unwrap();
        assert_eq!(tls::certificate_spki(&cert).unwrap(), spki.to_vec());
        let ours = k.certified_key().unwrap();
        assert_eq!(
            tls::certificate_spki(ours.end_entity_cert().unwrap()).unwrap(),
            spki.to_vec()
        );
    }
}
