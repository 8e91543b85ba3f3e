//! Impaired quinn endpoints on real UDP sockets, for tests and the harness: bind, wrap in an
//! [`ImpairedSocket`], and hand quinn the result.
//!
//! All of these must run inside a tokio runtime with I/O enabled (they return
//! [`ImpairError::NoRuntime`] otherwise, never panic).

use crate::config::{ConfigError, Impairment};
use crate::impair::{ImpairHandle, ImpairedSocket};
use crate::partition::Partition;
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ImpairError {
    /// Nothing was bound.
    #[error("invalid impairment: {0}")]
    Config(#[from] ConfigError),
    /// Nothing was bound (or the socket was closed again).
    #[error("cannot set up a UDP socket on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Nothing was bound.
    #[error("impaired endpoints need a tokio runtime with I/O enabled")]
    NoRuntime,
}

/// Bind a UDP socket on `bind` and wrap it (tokio runtime, its own partition switch unless
/// `partition` is given).
pub fn impaired_udp_socket(
    bind: SocketAddr,
    impairment: Impairment,
    seed: u64,
    partition: Option<Partition>,
) -> Result<(Arc<ImpairedSocket>, ImpairHandle), ImpairError> {
    impairment.validate()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ImpairError::NoRuntime);
    }
    let io = |source| ImpairError::Io { addr: bind, source };
    let socket = std::net::UdpSocket::bind(bind).map_err(io)?;
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let inner: Arc<dyn AsyncUdpSocket> = runtime.wrap_udp_socket(socket).map_err(io)?;
    Ok(ImpairedSocket::with_partition(
        inner,
        runtime,
        impairment,
        seed,
        partition.unwrap_or_default(),
    )?)
}

/// An endpoint over an impaired socket; `server_config` makes it accept connections.
pub fn endpoint(
    bind: SocketAddr,
    impairment: Impairment,
    seed: u64,
    partition: Option<Partition>,
    server_config: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, ImpairHandle), ImpairError> {
    let (socket, handle) = impaired_udp_socket(bind, impairment, seed, partition)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server_config,
        socket,
        Arc::new(TokioRuntime),
    )
    .map_err(|source| ImpairError::Io { addr: bind, source })?;
    Ok((endpoint, handle))
}

/// A client endpoint whose path is impaired (e.g. for `EdgeConfig::endpoint`).
pub fn client_endpoint(
    bind: SocketAddr,
    impairment: Impairment,
    seed: u64,
) -> Result<(quinn::Endpoint, ImpairHandle), ImpairError> {
    endpoint(bind, impairment, seed, None, None)
}

/// A server endpoint with no server config yet, for `ServerConfig::endpoint` of
/// `lifeboat-server` (which sets its own TLS and transport config on it).
pub fn server_endpoint(
    bind: SocketAddr,
    impairment: Impairment,
    seed: u64,
) -> Result<(quinn::Endpoint, ImpairHandle), ImpairError> {
    endpoint(bind, impairment, seed, None, None)
}
