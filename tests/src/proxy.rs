//! A TCP proxy between a pool and PostgreSQL that a test can cut and restore, to make the
//! database unreachable for one client without touching the shared server.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards to the upstream.
    Open,
    /// Kills existing connections; new ones are accepted and closed at once (like a refused
    /// connection: the client fails immediately).
    Refuse,
    /// Kills existing connections; new ones are accepted and never answered (like a vanished
    /// host: only the client's own timeouts end the wait).
    Blackhole,
    /// Existing connections stay open but nothing is forwarded any more, and new ones are held
    /// unanswered (a network partition that the kernel does not report: a query in flight
    /// waits for ever unless the client gives up). Leaving this mode kills them.
    Stall,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_inner(upstream, false).await
    }

    /// Like [`TcpProxy::start`], but drops the `options` parameter from each connection's
    /// startup packet, as RDS Proxy does: session settings sent there never reach the server.
    pub async fn start_stripping_startup_options(upstream: SocketAddr) -> Self {
        Self::start_inner(upstream, true).await
    }

    async fn start_inner(upstream: SocketAddr, strip_options: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (tx, _) = watch::channel(Mode::Open);
        let mode = Arc::new(tx);
        let modes = Arc::clone(&mode);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut rx = modes.subscribe();
                let current = *rx.borrow_and_update();
                match current {
                    Mode::Refuse => drop(client),
                    Mode::Blackhole | Mode::Stall => {
                        // Hold the socket until the mode changes (or for ever), never answering.
                        tokio::spawn(async move {
                            let _held = client;
                            let _ = rx.changed().await;
                        });
                    }
                    Mode::Open => {
                        tokio::spawn(forward(client, upstream, rx, strip_options));
                    }
                }
            }
        });
        Self { addr, mode, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches mode; leaving [`Mode::Open`] kills every open connection.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn rewrite_url(&self, url: &str) -> String {
        let Some(scheme_end) = url.find("://") else {
            return format!("{url} host={} port={}", self.addr.ip(), self.addr.port());
        };
        let start = scheme_end + 3;
        let end = url[start..]
            .find(['/', '?'])
            .map(|i| start + i)
            .unwrap_or(url.len());
        let authority = &url[start..end];
        let host_start = authority.rfind('@').map(|i| i + 1).unwrap_or(0);
        format!(
            "{}{}{}{}",
            &url[..start],
            &authority[..host_start],
            self.addr,
            &url[end..]
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set(Mode::Refuse);
        self.task.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    strip_options: bool,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if strip_options
        && strip_startup_options(&mut client, &mut server)
            .await
            .is_err()
    {
        return;
    }
    let left = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => Mode::Open,
        left = async {
            while mode.changed().await.is_ok() {
                let now = *mode.borrow();
                if now != Mode::Open {
                    return now;
                }
            }
            Mode::Refuse
        } => left,
    };
    if left == Mode::Stall {
        // Keep both sockets open and silent until the mode changes again.
        let _ = mode.changed().await;
    }
    // Dropping both sockets closes them: the client sees its connection die.
}

/// Reads the client's startup packet and sends it on without its `options` parameter.
async fn strip_startup_options(
    client: &mut TcpStream,
    server: &mut TcpStream,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = client.read_u32().await? as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    client.read_exact(&mut body).await?;
    const PROTOCOL_3: [u8; 4] = 196_608u32.to_be_bytes();
    if body.len() < 4 || body[..4] != PROTOCOL_3 {
        // Not a plain startup packet (an SSL request, say): pass it on as it is.
        server.write_u32(len as u32).await?;
        return server.write_all(&body).await;
    }
    let mut out = PROTOCOL_3.to_vec();
    let mut fields = body[4..].split(|b| *b == 0);
    while let Some(key) = fields.next() {
        if key.is_empty() {
            break;
        }
        let value = fields.next().unwrap_or_default();
        if key != b"options" {
            out.extend_from_slice(key);
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
    }
    out.push(0);
    server.write_u32(out.len() as u32 + 4).await?;
    server.write_all(&out).await
}

/// The `host:port` of a `postgres://` URL (for the proxy's upstream).
pub fn upstream_of(url: &str) -> SocketAddr {
    let cfg: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("parse database URL: {e}"));
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("upstream address {host}:{port}: {e}"))
}
