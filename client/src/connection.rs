//! The QUIC connection to one server: TLS trust, connect, handshake, reconnect, and the
//! request/response exchange on one stream.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use quinn::{Connection, ConnectionError, Endpoint, ReadExactError, RecvStream, SendStream};
use rkyv::util::AlignedVec;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use strata_proto::msg::{HandshakeRequest, HandshakeResponse};
use strata_proto::wire::{self, decode, Opcode, ResponseHead, Status, RESPONSE_HEAD_LEN};
use strata_proto::{Error, ErrorCode, Result};

use crate::config::{default_cert_path, ClientConfig, Transport};
use crate::transport::device::DeviceSegments;
use crate::transport::shm::SharedSegments;
use crate::transport::tcp::{DataPlane, DataPlaneSettings};
use crate::transport::{Direct, Route};

/// What the server said about itself in the handshake.
pub type ServerInfo = HandshakeResponse;

/// A live connection: what the server said about itself on it, and how it moves value
/// bytes.
pub(crate) struct Link {
    pub conn: Connection,
    pub info: ServerInfo,
    pub route: Route,
}

/// The client's endpoint and its current link; reconnects when the link is gone.
pub(crate) struct Connector {
    endpoint: Endpoint,
    addr: SocketAddr,
    server_name: String,
    auth_token: Option<String>,
    connect_timeout: Duration,
    transport: Transport,
    /// The TLS configuration, for data connections that speak TLS.
    tls: Arc<rustls::ClientConfig>,
    data_connections: usize,
    stripe_size: u64,
    current: RwLock<Option<Arc<Link>>>,
    /// The last mapped segments: a reconnect to the same server instance reuses them
    /// (and the page tables already built for them) instead of mapping anew.
    mapped: parking_lot::Mutex<Option<Arc<SharedSegments>>>,
    opened_device: parking_lot::Mutex<Option<Arc<DeviceSegments>>>,
    /// Serialises reconnects, so a burst of requests after a loss makes one connection.
    reconnecting: tokio::sync::Mutex<()>,
}

pub(crate) fn unavailable(msg: String) -> Error {
    Error::new(ErrorCode::Unavailable, msg)
}

/// Maps how quinn says a connection ended to a strata error.
pub(crate) fn connection_error(e: &ConnectionError) -> Error {
    match e {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == wire::CLOSE_UNAUTHORIZED.into() =>
        {
            let reason = String::from_utf8_lossy(&close.reason);
            Error::new(ErrorCode::Unauthorized, format!("server refused: {reason}"))
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == wire::CLOSE_BUSY.into() =>
        {
            let reason = String::from_utf8_lossy(&close.reason);
            Error::new(ErrorCode::Busy, format!("server refused: {reason}"))
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == wire::CLOSE_SHUTDOWN.into() =>
        {
            unavailable("the server shut down".into())
        }
        ConnectionError::TimedOut => unavailable("connection to the server timed out".into()),
        other => unavailable(format!("connection lost: {other}")),
    }
}

fn trust(config: &ClientConfig) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let add_file = |roots: &mut rustls::RootCertStore, path: &Path| -> Result<()> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                let msg = format!("reading CA certificate {}: {e}", path.display());
                Error::new(ErrorCode::InvalidArgument, msg)
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            let msg = format!("{} holds no usable certificate", path.display());
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        }
        Ok(())
    };
    match &config.ca_cert {
        Some(path) => add_file(&mut roots, path)?,
        None => {
            if let Some(path) = default_cert_path().filter(|p| p.exists()) {
                add_file(&mut roots, &path)?;
            }
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    if let Some(pem) = &config.trusted_pem {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                let msg = format!("a trusted certificate is not PEM: {e}");
                Error::new(ErrorCode::InvalidArgument, msg)
            })?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "no certificate to trust: give the server's server-cert.pem as the CA \
             (--ca / STRATA_CA / ClientConfig::ca_cert)",
        ));
    }
    Ok(roots)
}

fn split_host(server: &str) -> &str {
    match server.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => server,
    }
}

impl Connector {
    /// Sets up TLS and a UDP endpoint; does not connect yet.
    pub fn new(config: &ClientConfig) -> Result<Connector> {
        let addr = config
            .server
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                let msg = format!("{:?} is not a host:port address", config.server);
                Error::new(ErrorCode::InvalidArgument, msg)
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::new(ErrorCode::Internal, format!("TLS setup: {e}")))?
            .with_root_certificates(trust(config)?)
            .with_no_client_auth();
        let data_tls = Arc::new(tls.clone());
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("TLS setup: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        client_config.transport_config(Arc::new(wire::tuning::transport_config()));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let mut endpoint = Endpoint::client(bind)
            .map_err(|e| unavailable(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(client_config);
        let server_name = config
            .server_name
            .clone()
            .unwrap_or_else(|| split_host(&config.server).to_owned());
        let auth_token = strata_proto::token::resolve_token(
            config.auth_token.clone(),
            config.auth_token_file.as_deref(),
            ("auth_token", "auth_token_file"),
        )?;
        Ok(Connector {
            endpoint,
            addr,
            server_name,
            auth_token,
            connect_timeout: config.connect_timeout,
            transport: config.transport,
            tls: data_tls,
            data_connections: config.data_connections,
            stripe_size: config.stripe_size,
            current: RwLock::new(None),
            mapped: parking_lot::Mutex::new(None),
            opened_device: parking_lot::Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The current link, connecting (again) if there is none or it has ended.
    pub async fn link(&self) -> Result<Arc<Link>> {
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        if let Some(link) = self.live() {
            return Ok(link); // another task reconnected meanwhile
        }
        let link = Arc::new(self.connect().await?);
        *self.current.write() = Some(Arc::clone(&link));
        Ok(link)
    }

    fn live(&self) -> Option<Arc<Link>> {
        let current = self.current.read();
        current
            .as_ref()
            .filter(|l| l.conn.close_reason().is_none())
            .cloned()
    }

    /// Drops `link` if it is still the current one (it failed a request): the next
    /// request connects anew.
    pub fn discard(&self, link: &Arc<Link>) {
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
            link.conn
                .close(0u8.into(), b"client gave up on this connection");
            *current = None;
        }
    }

    async fn connect(&self) -> Result<Link> {
        let attempt = async {
            let connecting = self
                .endpoint
                .connect(self.addr, &self.server_name)
                .map_err(|e| unavailable(format!("cannot connect to {}: {e}", self.addr)))?;
            let conn = connecting
                .await
                .map_err(|e| unavailable(format!("cannot connect to {}: {e}", self.addr)))?;
            let hello = HandshakeRequest {
                client_version: env!("CARGO_PKG_VERSION").to_owned(),
                auth_token: self.auth_token.clone(),
                data_plane: matches!(self.transport, Transport::Auto | Transport::Tcp),
            };
            let frame = wire::encode_request(Opcode::Handshake, &hello);
            let (_, header) = exchange(&conn, &frame, &[]).await?;
            let info = decode::<HandshakeResponse>(&header)?;
            let shm = self.map_segments(&info).await?;
            let device = self.open_device(&info);
            let direct = (shm.is_some() || device.is_some()).then_some(Direct { shm, device });
            let route = match direct {
                Some(direct) => Route::Local(direct),
                None => match self.open_data_plane(&info).await? {
                    Some(data) => Route::Tcp(data),
                    None => Route::Quic,
                },
            };
            Ok(Link { conn, info, route })
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            // Unreachable rather than slow: QUIC gets no refusal from a port nobody
            // listens on, only silence.
            Err(_) => Err(unavailable(format!(
                "no answer from {} within {:?} (is the server running?)",
                self.addr, self.connect_timeout
            ))),
        }
    }

    /// The shared segments for a link to the server that answered `info`, when this
    /// client may use shared memory and the server is on this host. A failure is an error
    /// only when the config insists on shared memory; `auto` falls back to QUIC.
    async fn map_segments(&self, info: &ServerInfo) -> Result<Option<Arc<SharedSegments>>> {
        let insist = match self.transport {
            Transport::Quic | Transport::Tcp => return Ok(None),
            Transport::Auto => false,
            Transport::Shm => true,
        };
        let refuse = |why: String| {
            if insist {
                Err(unavailable(format!("transport shm: {why}")))
            } else {
                tracing::debug!("shared memory not used: {why}");
                Ok(None)
            }
        };
        let Some(offer) = info.shm.clone() else {
            return refuse("the server does not share its memory".into());
        };
        let here = strata_proto::host_id();
        if info.host_id != here {
            let why = format!("the server is on {}, this client on {here}", info.host_id);
            return refuse(why);
        }
        let reuse = self.mapped.lock().clone();
        if let Some(segments) = reuse.filter(|s| s.instance() == info.instance) {
            return Ok(Some(segments));
        }
        let instance = info.instance;
        let timeout = self.connect_timeout;
        let attached =
            tokio::task::spawn_blocking(move || SharedSegments::attach(&offer, instance, timeout))
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, format!("mapping task: {e}")))
                .and_then(|r| r);
        match attached {
            Ok(segments) => {
                let segments = Arc::new(segments);
                SharedSegments::prefault_in_background(&segments);
                *self.mapped.lock() = Some(Arc::clone(&segments));
                Ok(Some(segments))
            }
            Err(e) => refuse(e.to_string()),
        }
    }

    /// The server's device tier opened in this process, when the server has one, is on
    /// this host, and this client may use direct transports. A failure (the backend does
    /// not open here) leaves device-tier objects to the server.
    fn open_device(&self, info: &ServerInfo) -> Option<Arc<DeviceSegments>> {
        let direct = matches!(self.transport, Transport::Auto | Transport::Shm);
        if !direct || info.host_id != strata_proto::host_id() {
            return None;
        }
        let offer = info.device.as_ref()?;
        let reuse = self.opened_device.lock().clone();
        if let Some(device) = reuse.filter(|d| d.instance() == info.instance) {
            return Some(device);
        }
        match DeviceSegments::open(offer, info.instance) {
            Ok(device) => {
                let device = Arc::new(device);
                *self.opened_device.lock() = Some(Arc::clone(&device));
                Some(device)
            }
            Err(e) => {
                tracing::debug!("device transport not used: {e}");
                None
            }
        }
    }

    /// The server's TCP data plane with one connection open, when this client may use it
    /// and the server offers it. A failure is an error only when the config insists on
    /// tcp; `auto` falls back to QUIC streams.
    async fn open_data_plane(&self, info: &ServerInfo) -> Result<Option<Arc<DataPlane>>> {
        let insist = match self.transport {
            Transport::Tcp => true,
            Transport::Auto => false,
            Transport::Quic | Transport::Shm => return Ok(None),
        };
        let refuse = |why: String| {
            if insist {
                Err(unavailable(format!("transport tcp: {why}")))
            } else {
                tracing::debug!("data plane not used: {why}");
                Ok(None)
            }
        };
        let Some(offer) = &info.data_plane else {
            return refuse("the server runs no data plane".into());
        };
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| {
            let msg = format!("{:?} is not a server name: {e}", self.server_name);
            Error::new(ErrorCode::InvalidArgument, msg)
        })?;
        let settings = DataPlaneSettings {
            connections: self.data_connections,
            stripe: self.stripe_size,
            connect_timeout: self.connect_timeout,
            tls: (Arc::clone(&self.tls), name),
        };
        match DataPlane::open(offer, self.addr.ip(), settings).await {
            Ok(plane) => Ok(Some(Arc::new(plane))),
            Err(e) => refuse(e.message().to_owned()),
        }
    }

    /// Closes the connection and waits (briefly) for the server to hear it. The shared
    /// segments are unmapped once no copy in flight uses them.
    pub async fn close(&self) {
        self.mapped.lock().take();
        self.opened_device.lock().take();
        if let Some(link) = self.current.write().take() {
            link.conn.close(0u8.into(), b"client closed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Sends one request (frame, then payload) on a new stream and reads the response header.
/// Returns the stream, positioned at the response payload, and the header.
pub(crate) async fn exchange(
    conn: &Connection,
    frame: &[u8],
    payload: &[u8],
) -> Result<(RecvStream, AlignedVec)> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
    send_request(&mut send, frame, Payload::Borrowed(payload)).await?;
    let header = read_response(&mut recv).await?;
    Ok((recv, header))
}

pub(crate) async fn send_request(
    send: &mut SendStream,
    frame: &[u8],
    payload: Payload<'_>,
) -> Result<()> {
    let write = async {
        send.write_all(frame).await?;
        match payload {
            Payload::Borrowed(bytes) if !bytes.is_empty() => send.write_all(bytes).await?,
            // Handed to quinn as is: no copy into its send buffer.
            Payload::Owned(bytes) if !bytes.is_empty() => send.write_chunk(bytes).await?,
            _ => {}
        }
        Ok::<(), quinn::WriteError>(())
    };
    match write.await {
        Ok(()) => {
            let _ = send.finish();
            Ok(())
        }
        // The server answered before reading everything (an error, or a key that
        // already exists): its answer is on the receive side.
        Err(quinn::WriteError::Stopped(_)) => Ok(()),
        Err(quinn::WriteError::ConnectionLost(e)) => Err(connection_error(&e)),
        Err(e) => Err(unavailable(format!("sending the request: {e}"))),
    }
}

/// The raw value bytes after a request's header.
pub(crate) enum Payload<'a> {
    /// Copied into quinn's send buffer.
    Borrowed(&'a [u8]),
    /// Given to quinn without a copy.
    Owned(bytes::Bytes),
}

/// Reads a response head and header; an error frame becomes the error it carries.
pub(crate) async fn read_response(recv: &mut RecvStream) -> Result<AlignedVec> {
    let mut head = [0u8; RESPONSE_HEAD_LEN];
    recv.read_exact(&mut head).await.map_err(read_error)?;
    let head = ResponseHead::decode(head)?;
    let len = head.header_len as usize;
    let mut header = AlignedVec::<16>::with_capacity(len);
    header.resize(len, 0);
    recv.read_exact(&mut header).await.map_err(read_error)?;
    match head.status {
        Status::Ok => Ok(header),
        Status::Error => Err(wire::decode_error(&header)),
    }
}

/// Maps a failed read of a response to a strata error.
pub(crate) fn read_error(e: ReadExactError) -> Error {
    match e {
        ReadExactError::FinishedEarly(n) => Error::new(
            ErrorCode::Protocol,
            format!("the server's response ended early ({n} bytes into a read)"),
        ),
        ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => connection_error(&e),
        ReadExactError::ReadError(e) => unavailable(format!("reading the response: {e}")),
    }
}
