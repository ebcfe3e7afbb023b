//! `GET /`: a page a person can read — apps, instances, status, last renewal and the
//! self-preservation state. Rendered on the server; a small script turns timestamps
//! into "N s ago" and filters rows, so the page is useful without it too.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use super::Node;
use crate::model::{Millis, Status};

/// Instance rows the page lists at most: a person reads no more, and a registry of
/// a million instances must not cost hundreds of megabytes of HTML per page view.
const MAX_ROWS: usize = 1000;

pub(super) async fn page(State(node): State<Arc<Node>>) -> Html<String> {
    let now = node.now();
    let stats = node.registry.stats(now);
    let apps = node.registry.applications_live();
    let mut h = String::with_capacity(4096 + apps.instance_count().min(MAX_ROWS) * 400);
    h.push_str(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"15\"><title>Registry dashboard</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
         th{background:#f3f3f3}.UP{color:#176317}.DOWN,.OUT_OF_SERVICE{color:#a40000}.STARTING,.UNKNOWN{color:#8a6d00}\
         .warn{background:#fff3cd;border:1px solid #e0c36c;padding:.6em}.ok{background:#e8f5e9;border:1px solid #9ccc9f;padding:.6em}\
         </style></head><body>",
    );
    h.push_str("<h1>Service registry</h1>");
    let (class, text) = if !stats.self_preservation_enabled {
        (
            "ok",
            "Self-preservation is disabled: expired leases are always evicted.".to_owned(),
        )
    } else if stats.self_preservation_active {
        (
            "warn",
            format!(
                "Self-preservation is ON: only {} renewals in the last minute, threshold {} — expired \
                 leases are kept, instances may be listed that are no longer there.",
                stats.renews_last_min, stats.renews_threshold
            ),
        )
    } else {
        (
            "ok",
            format!(
                "Self-preservation is armed but not active: {} renewals in the last minute, above the threshold of {}.",
                stats.renews_last_min, stats.renews_threshold
            ),
        )
    };
    let _ = write!(
        h,
        "<p id=\"self-preservation\" class=\"{class}\">{}</p>",
        esc(&text)
    );
    let _ = write!(
        h,
        "<table id=\"summary\"><tr><th>Applications</th><td>{}</td></tr><tr><th>Instances</th><td>{}</td></tr>\
         <tr><th>Status counts</th><td>{}</td></tr><tr><th>Expected renewals / min</th><td>{:.1}</td></tr>\
         <tr><th>Renewals last minute</th><td>{}</td></tr><tr><th>Registry version</th><td>{}</td></tr>\
         <tr><th>Server time</th><td>{}</td></tr><tr><th>Up since</th><td>{}</td></tr><tr><th>Peers</th><td>{}</td></tr></table>",
        stats.apps,
        stats.instances,
        esc(if stats.apps_hashcode.is_empty() {
            "none"
        } else {
            &stats.apps_hashcode
        }),
        stats.expected_renews_per_min,
        stats.renews_last_min,
        stats.version,
        utc(now),
        utc(node.started_at),
        esc(&if node.cfg.peers.is_empty() {
            "none".to_owned()
        } else {
            node.cfg.peers.join(", ")
        }),
    );
    h.push_str(
        "<h2>Instances</h2><p><label>Filter: <input id=\"filter\" placeholder=\"app, id or status\"></label></p>\
         <table id=\"instances\"><thead><tr><th>Application</th><th>Instance</th><th>Status</th><th>Address</th>\
         <th>VIP</th><th>Last renewal</th><th>Registered</th></tr></thead><tbody>",
    );
    if apps.applications.is_empty() {
        h.push_str("<tr><td colspan=\"7\">No instances are registered.</td></tr>");
    }
    let total = apps.instance_count();
    if total > MAX_ROWS {
        let _ = write!(
            h,
            "<tr id=\"more\"><td colspan=\"7\">The first {MAX_ROWS} of {total} instances, by \
             application and id; <code>GET /eureka/v2/apps</code> lists them all.</td></tr>"
        );
    }
    let listed = apps
        .applications
        .iter()
        .flat_map(|a| a.instances.iter().map(move |i| (a, i)))
        .take(MAX_ROWS);
    for (app, inst) in listed {
        let i = &inst.info;
        let status = if i.overridden_status != Status::Unknown {
            format!("{} (override)", i.status)
        } else {
            i.status.to_string()
        };
        let _ = write!(
            h,
            "<tr class=\"instance\" data-app=\"{app}\" data-id=\"{id}\"><td>{app}</td><td>{id}</td>\
             <td class=\"status {cls}\">{status}</td><td>{host}:{port}</td><td>{vip}</td>\
             <td><span class=\"ago\" data-ts=\"{ts}\" data-now=\"{now}\">{abs}</span></td><td>{reg}</td></tr>",
            app = esc(&app.name),
            id = esc(&i.instance_id),
            cls = i.status.as_str(),
            status = esc(&status),
            host = esc(&i.host_name),
            port = i.port.port,
            vip = esc(i.vip_address.as_deref().unwrap_or("")),
            ts = inst.lease.last_renewal_timestamp,
            abs = utc(inst.lease.last_renewal_timestamp),
            reg = utc(inst.lease.registration_timestamp),
        );
    }
    h.push_str(
        "</tbody></table><script>\
         for (const s of document.querySelectorAll('.ago')) {\
           const secs = Math.max(0, Math.round((Number(s.dataset.now) - Number(s.dataset.ts)) / 1000));\
           s.title = s.textContent; s.textContent = secs + ' s ago';\
         }\
         const f = document.getElementById('filter');\
         f.addEventListener('input', () => {\
           const q = f.value.toLowerCase();\
           for (const r of document.querySelectorAll('tr.instance'))\
             r.hidden = q !== '' && !r.textContent.toLowerCase().includes(q);\
         });\
         document.body.dataset.rendered = 'yes';\
         </script></body></html>",
    );
    Html(h)
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds (civil-from-days, no time zone database).
fn utc(ms: Millis) -> String {
    if ms == 0 {
        return "—".into();
    }
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(0), "—");
    }
}
