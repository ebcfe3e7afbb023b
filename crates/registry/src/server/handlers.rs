//! Request handlers: parse, call the core, answer as Eureka does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::cache::Payload;
use super::{Counters, Node, REPLICATION_HEADER};
use crate::codec::{self, Format};
use crate::error::Error;
use crate::model::{Instance, Millis, Status};
use crate::registry::Renewal;
use crate::replication::{self, Task};

/// An error answer: a status and a plain-text message saying what was wrong.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Malformed { .. }
            | Error::MissingField(_)
            | Error::InvalidField { .. }
            | Error::AppMismatch { .. }
            | Error::InvalidStatus(_)
            | Error::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
            Error::UnknownApp(_) | Error::UnknownInstance { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn format_of(headers: &HeaderMap) -> Format {
    Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

fn is_replication(headers: &HeaderMap) -> bool {
    headers
        .get(REPLICATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(needle))
}

fn dirty(q: &HashMap<String, String>) -> Result<Option<Millis>, ApiError> {
    match q
        .get("lastDirtyTimestamp")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != "null")
    {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid("lastDirtyTimestamp", s, "expected milliseconds").into()),
    }
}

/// Answers with a cached payload: 304 on a matching `If-None-Match`, gzip when accepted.
async fn respond(p: Arc<Payload>, format: Format, headers: &HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&p.etag).unwrap_or(HeaderValue::from_static("\"\""));
    if header_has(headers, header::IF_NONE_MATCH, &p.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let vary = HeaderValue::from_static("accept, accept-encoding");
    let ctype = HeaderValue::from_static(format.content_type());
    if header_has(headers, header::ACCEPT_ENCODING, "gzip") && p.body.len() > 512 {
        let body = p.gzipped().await;
        let h = [
            (header::CONTENT_TYPE, ctype),
            (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            (header::ETAG, etag),
            (header::VARY, vary),
        ];
        return (h, body).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::ETAG, etag),
            (header::VARY, vary),
        ],
        p.body.clone(),
    )
        .into_response()
}

fn instance_body(inst: &Instance, format: Format) -> Response {
    let body = match format {
        Format::Json => codec::instance_json(&inst.info, &inst.lease),
        Format::Xml => codec::instance_xml(&inst.info, &inst.lease),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

pub(super) async fn all_apps(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let format = format_of(&headers);
    Counters::bump(&node.counters.full_fetches);
    node.metrics.full_fetches.increment(1);
    let p = node.cache.full(&node, format).await;
    respond(p, format, &headers).await
}

/// `GET /apps/delta`: Eureka's delta (every change in the retention window), cached.
///
/// Extension for clients that know the version they hold: `?version=N` answers with
/// the changes after N only, and `&wait=30s` first waits until the registry moves past
/// N (or the wait ends) — a long poll for push-like latency.
pub(super) async fn delta(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let format = format_of(&headers);
    Counters::bump(&node.counters.delta_fetches);
    node.metrics.delta_fetches.increment(1);
    let since: Option<u64> = match q.get("version") {
        Some(v) => Some(
            v.trim()
                .parse()
                .map_err(|_| Error::invalid("version", v, "expected a version number"))?,
        ),
        None => None,
    };
    if let Some(w) = q.get("wait") {
        let wait = parse_wait(w)?.min(node.cfg.max_long_poll);
        let since = since.ok_or(Error::MissingField("version"))?;
        let mut versions = node.versions.clone();
        let mut shutdown = node.shutdown.clone();
        tokio::select! {
            _ = versions.wait_for(|v| *v > since) => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let Some(since) = since else {
        let p = node.cache.delta(&node, format).await;
        return Ok(respond(p, format, &headers).await);
    };
    let registry = node.registry.clone();
    let now = node.now();
    let body = tokio::task::spawn_blocking(move || {
        codec::encode_applications(&registry.delta_since(since, now), format)
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("delta build failed: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// `30s`, `500ms` or a bare number of seconds.
fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    let t = s.trim();
    let parsed = if let Some(ms) = t.strip_suffix("ms") {
        ms.trim().parse::<u64>().ok().map(Duration::from_millis)
    } else {
        t.strip_suffix('s')
            .unwrap_or(t)
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    };
    parsed.ok_or_else(|| Error::invalid("wait", s, "expected e.g. 30s or 500ms").into())
}

pub(super) async fn one_app(
    State(node): State<Arc<Node>>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let format = format_of(&headers);
    let name = app.to_uppercase();
    let p = node
        .cache
        .app(&node, &name, format)
        .ok_or(Error::UnknownApp(name))?;
    Ok(respond(p, format, &headers).await)
}

pub(super) async fn one_instance(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let inst = node
        .registry
        .instance(&app, &id)
        .ok_or_else(|| unknown(&app, &id))?;
    Ok(instance_body(&inst, format_of(&headers)))
}

pub(super) async fn instance_by_id(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let found = node.registry.instances_by_id(&id);
    let inst = found
        .first()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown instance id {id:?}")))?;
    Ok(instance_body(inst, format_of(&headers)))
}

pub(super) async fn vip(
    State(node): State<Arc<Node>>,
    Path(vip): Path<String>,
    headers: HeaderMap,
) -> Response {
    let format = format_of(&headers);
    let p = node.cache.vip(&node, &vip, false, format);
    respond(p, format, &headers).await
}

pub(super) async fn svip(
    State(node): State<Arc<Node>>,
    Path(svip): Path<String>,
    headers: HeaderMap,
) -> Response {
    let format = format_of(&headers);
    let p = node.cache.vip(&node, &svip, true, format);
    respond(p, format, &headers).await
}

/// `POST /apps/{APP}` with `{"instance":{...}}` or `<instance>`: 204, as Eureka answers.
pub(super) async fn register(
    State(node): State<Arc<Node>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let format = Format::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let info = codec::decode_instance(&body, format)?;
    let path_app = app.to_uppercase();
    if info.app != path_app {
        return Err(Error::AppMismatch {
            path: path_app,
            body: info.app,
        }
        .into());
    }
    let repl = is_replication(&headers);
    let stored = node.registry.register(info, repl, node.now())?;
    Counters::bump(&node.counters.registrations);
    if !repl {
        replicate(&node, &Task::Register(stored));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /apps/{APP}/{ID}`: 200, or 404 so that the client registers again.
pub(super) async fn renew(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let repl = is_replication(&headers);
    let outcome = node
        .registry
        .renew(&app, &id, dirty(&q)?, repl, node.now())?;
    Counters::bump(&node.counters.heartbeats);
    if !repl
        && node.replicator.is_some()
        && let Some(inst) = node.registry.instance(&app, &id)
    {
        replicate(&node, &Task::heartbeat(&inst.info));
    }
    Ok(match outcome {
        Renewal::Renewed => StatusCode::OK.into_response(),
        Renewal::ClientNewer => (
            StatusCode::NOT_FOUND,
            "the client's record is newer: register again",
        )
            .into_response(),
        Renewal::ServerNewer(info) if repl => {
            let inst = Instance {
                lease: info.lease_info,
                info,
            };
            let mut r = instance_body(&inst, format_of(&headers));
            *r.status_mut() = StatusCode::CONFLICT;
            r
        }
        Renewal::ServerNewer(_) => StatusCode::OK.into_response(),
    })
}

pub(super) async fn cancel(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let repl = is_replication(&headers);
    node.registry.cancel_from(&app, &id, repl, node.now())?;
    Counters::bump(&node.counters.cancels);
    if !repl {
        replicate(
            &node,
            &Task::Cancel {
                app: app.to_uppercase(),
                id,
            },
        );
    }
    Ok(StatusCode::OK.into_response())
}

/// `PUT .../status?value=OUT_OF_SERVICE[&lastDirtyTimestamp=]`.
pub(super) async fn status_update(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let value = q.get("value").ok_or(Error::MissingField("value"))?;
    let status = Status::parse(value)?;
    let dirty = dirty(&q)?;
    node.registry
        .set_status_override(&app, &id, status, dirty, node.now())?;
    if !is_replication(&headers) {
        replicate(
            &node,
            &Task::StatusUpdate {
                app: app.to_uppercase(),
                id,
                status,
                dirty,
            },
        );
    }
    Ok(StatusCode::OK.into_response())
}

/// `DELETE .../status[?value=UP][&lastDirtyTimestamp=]`.
pub(super) async fn status_delete(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let status = q.get("value").map(|v| Status::parse(v)).transpose()?;
    let dirty = dirty(&q)?;
    node.registry
        .delete_status_override(&app, &id, status, dirty, node.now())?;
    if !is_replication(&headers) {
        replicate(
            &node,
            &Task::DeleteStatusOverride {
                app: app.to_uppercase(),
                id,
                status,
                dirty,
            },
        );
    }
    Ok(StatusCode::OK.into_response())
}

/// `PUT .../metadata?key=value&...`: merges the pairs into the instance's metadata.
pub(super) async fn metadata_update(
    State(node): State<Arc<Node>>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    if q.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no metadata given: expected ?key=value".into(),
        ));
    }
    let entries: BTreeMap<String, String> = q.into_iter().collect();
    let info = node
        .registry
        .update_metadata(&app, &id, &entries, node.now())?;
    if !is_replication(&headers) {
        replicate(&node, &Task::Register(info));
    }
    Ok(StatusCode::OK.into_response())
}

/// `POST /peerreplication/batch`: a peer's batch, applied as replication (never re-replicated).
pub(super) async fn replication_batch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    if !is_replication(&headers) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("replication batches need `{REPLICATION_HEADER}: true`"),
        ));
    }
    let answer = replication::apply_batch(&node.registry, &body, node.now())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

pub(super) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

/// Mutating requests need the configured credentials; reads stay open.
pub(super) async fn require_auth(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &node.cfg.auth {
        let reading = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !reading && !auth.accepts(given) {
            let scheme = match auth {
                crate::Auth::Bearer(_) => "Bearer realm=\"registry\"",
                crate::Auth::Basic { .. } => "Basic realm=\"registry\"",
            };
            let msg = if given.is_some() {
                "wrong credentials"
            } else {
                "credentials required for this request"
            };
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, scheme)],
                msg,
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a request body in an encoding the server cannot decode, with a message
/// (the decompression layer behind it would answer 415 with an empty body).
pub(super) async fn check_content_encoding(req: Request, next: Next) -> Response {
    if let Some(enc) = req.headers().get(header::CONTENT_ENCODING)
        && !matches!(enc.as_bytes(), b"gzip" | b"identity")
    {
        let shown = String::from_utf8_lossy(enc.as_bytes());
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::ACCEPT_ENCODING, "gzip")],
            format!("unsupported Content-Encoding {shown:?}: send gzip or no encoding"),
        )
            .into_response();
    }
    next.run(req).await
}

fn replicate(node: &Node, task: &Task) {
    if let Some(r) = &node.replicator {
        r.enqueue(task);
    }
}

fn unknown(app: &str, id: &str) -> ApiError {
    Error::UnknownInstance {
        app: app.to_uppercase(),
        id: id.to_owned(),
    }
    .into()
}
