//! The crate's one error type.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the registry, its codecs, its server and its client.
///
/// Messages are lower-case and name the offending value, so that a 4xx answer built
/// from one tells the caller exactly what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The field of [`crate::Config`] (or another config type).
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A request body is not well-formed JSON or XML.
    #[error("malformed {format} body: {reason}")]
    Malformed {
        /// `"json"` or `"xml"`.
        format: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A required field is absent or blank.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field is present but unusable.
    #[error("invalid value for `{field}`: {value:?}: {reason}")]
    InvalidField {
        /// The field name, as on the wire.
        field: &'static str,
        /// The rejected value (truncated when long).
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The body names another application than the URL.
    #[error("mismatched app name: the path says {path:?} but the body says {body:?}")]
    AppMismatch {
        /// The upper-cased app name from the URL.
        path: String,
        /// The upper-cased app name from the body.
        body: String,
    },
    /// No instance of this application is registered.
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    /// This instance is not registered (a heartbeat answer of 404: register again).
    #[error("unknown instance {app}/{id}")]
    UnknownInstance {
        /// Application name.
        app: String,
        /// Instance id.
        id: String,
    },
    /// A status string that Eureka does not know.
    #[error("invalid status {0:?}: expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN")]
    InvalidStatus(String),
    /// An HTTP exchange with a registry server failed below HTTP (connect, timeout, body).
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL that was requested.
        url: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },
    /// A registry server answered with an unexpected status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL that was requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// No server URL answered.
    #[error("no registry server answered (tried {tried}): {last}")]
    NoServer {
        /// How many URLs were tried.
        tried: usize,
        /// The last failure, as text.
        last: String,
    },
    /// Binding or serving a socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Shorthand for [`Error::InvalidField`], truncating long values.
    pub(crate) fn invalid(
        field: &'static str,
        value: impl AsRef<str>,
        reason: &'static str,
    ) -> Self {
        let value = value.as_ref();
        let value = match value.char_indices().nth(80) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        Self::InvalidField {
            field,
            value,
            reason,
        }
    }
}
