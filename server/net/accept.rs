//! Accepting connections: admission, the TLS handshake and the first bytes, each bounded in
//! time, in tasks of their own so that a silent client never stalls the accept loop.
//!
//! Both listeners take their connections from [`accept_connections`]: a connection reaches
//! the HTTP or gRPC server only once it has a place ([`Admission`]), has finished its TLS
//! handshake (when TLS is on) and has sent its first bytes, all within `handshake_timeout`.
//! A connection that does not is closed, which is what keeps a slow or idle client from
//! holding a place forever before it has said anything.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, CallerProof, Slot};

/// Connections handshaken but not yet taken by the server.
const READY_QUEUE: usize = 64;

/// An admitted connection: plain TCP or TLS, holding its place until dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    transport: Transport,
    slot: Arc<Slot>,
    peer: SocketAddr,
}

#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Its place in the admission (activity, in-flight requests, eviction).
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Pending connections the kernel queues for a listener before it refuses more (capped by
/// `net.core.somaxconn`). Larger than tokio's 1,024: under a connection storm a full queue
/// drops a real sender's SYN, which its kernel resends only a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`LISTEN_BACKLOG`].
pub async fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted server may bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts on `listener` until `stop` is cancelled, handing out connections that have a place
/// in `admission` and finished their handshake within `handshake_timeout`.
pub(crate) fn accept_connections(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admission: Admission,
    handshake_timeout: Duration,
    stop: CancellationToken,
) -> mpsc::Receiver<Conn> {
    let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = stop.cancelled() => return,
                () = ready_tx.closed() => return,
            };
            let Some(slot) = admission.admit() else {
                // Dropping the stream closes it: the client sees the connection reset.
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            let ready_tx = ready_tx.clone();
            tokio::spawn(async move {
                let slot = Arc::new(slot);
                match tokio::time::timeout(handshake_timeout, handshake(stream, tls)).await {
                    Ok(Ok(transport)) => {
                        slot.touch();
                        let conn = Conn {
                            transport,
                            slot,
                            peer,
                        };
                        let _ = ready_tx.send(conn).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "handshake failed"),
                    Err(_) => tracing::debug!(%peer, "closed: no handshake or request in time"),
                }
            });
        }
    });
    ready
}

/// Accepts the next connection, riding out transient errors: when the process is out of file
/// descriptors (EMFILE), the pending connection stays in the kernel's queue and accept is
/// retried shortly, once places have been freed.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS handshake, then waits for the client's first bytes.
async fn handshake(stream: TcpStream, tls: Option<TlsAcceptor>) -> io::Result<Transport> {
    match tls {
        Some(acceptor) => {
            let tls = acceptor.accept(stream).await?;
            Ok(Transport::Tls(Box::new(tls)))
        }
        None => {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ));
            }
            Ok(Transport::Plain(stream))
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.slot.touch();
        }
        result
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What tonic puts in the extensions of every request of a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    /// Marks the connection as having made an authenticated call.
    pub(crate) proof: CallerProof,
}

/// tonic serves `Conn`s as they come from [`accept_connections`].
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            proof: self.slot.proof(),
        }
    }
}
