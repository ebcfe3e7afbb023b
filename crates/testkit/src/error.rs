//! The crate's one error type.
//!
//! Probing a service is the only thing in this crate that fails in a way a
//! caller may want to match on, hence the name; the proxy, the ZooKeeper
//! helpers and `scrape` fail with the `std::io::Error` of the operation that
//! failed.

use std::net::SocketAddr;

use crate::Service;

/// Why a service could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The configured URL does not name a reachable host and port.
    #[error("{service} endpoint {url:?} is not a valid host:port")]
    BadEndpoint {
        /// The service.
        service: Service,
        /// The URL as configured.
        url: String,
    },
    /// Nothing answered over the service's protocol at the address.
    #[error("{service} is not answering at {addr}: {reason}")]
    NotAnswering {
        /// The service.
        service: Service,
        /// The address tried.
        addr: SocketAddr,
        /// What went wrong: refused, timed out, or an unexpected reply.
        reason: String,
    },
}

/// The result of probing a service.
pub type Result<T, E = ProbeError> = std::result::Result<T, E>;
