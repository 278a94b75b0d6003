//! The operator's endpoints: the fleet status page (`GET /`), its JSON twin
//! (`GET /v1/devices`) and the metrics (`GET /metrics`). None is signed:
//! they show masked IDs, labels and paths, nothing that lets anyone upload.

use std::fmt::Write;
use std::time::SystemTime;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use actix_web::{HttpResponse, web};
use logferry_common::update::Version;
use logferry_common::{human_bytes, human_duration};

use crate::fleet::{DeviceReport, DeviceState, FleetReport, Timestamp, UpdateState, UpdateStatus};
use crate::ids::Device;
use crate::metrics;
use crate::state::AppState;
use crate::store::Store;

/// A clock offset the page mentions, in seconds (the JSON gives every one).
const CLOCK_WORTH_SHOWING_SECS: u64 = 60;

/// How often the page reloads itself, in seconds.
const REFRESH_SECS: u32 = 30;

/// The page has no script and loads nothing: only its own inline style.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'";

fn report<S>(state: &AppState<S>) -> FleetReport {
    let published = state.publish.as_ref().map(|publish| move |device: &Device| publish.release_for(device).version());
    let published = published.as_ref().map(|version| version as &dyn Fn(&Device) -> Version);
    state.fleet.report(&state.ids.current(), published, SystemTime::now())
}

pub async fn page<S: Store>(state: web::Data<AppState<S>>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((CONTENT_SECURITY_POLICY, PAGE_POLICY))
        .body(render_page(&report(&state)))
}

pub async fn devices<S: Store>(state: web::Data<AppState<S>>) -> HttpResponse {
    HttpResponse::Ok().insert_header((CACHE_CONTROL, "no-store")).json(report(&state))
}

pub async fn metrics<S: Store>(state: web::Data<AppState<S>>) -> HttpResponse {
    HttpResponse::Ok().insert_header((CONTENT_TYPE, metrics::CONTENT_TYPE)).body(state.metrics.render(&report(&state)))
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px 32px;color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.summary{color:#57606a;margin:0 0 16px}.summary a{color:#0969da}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #eaeef2;vertical-align:top;white-space:nowrap}
th{background:#f6f8fa;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#57606a}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;color:#57606a}
small{color:#57606a}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#dafbe1;color:#116329}
.badge.stale{background:#ffebe9;color:#a40e26}
.badge.never{background:#eaeef2;color:#57606a}
tr.stale td{background:#fff5f5}
tr.stale td:first-child{box-shadow:inset 4px 0 #cf222e}
.badge.current{background:#dafbe1;color:#116329}
.badge.behind{background:#fff8c5;color:#7d4e00}
.badge.rolled_back,.badge.failed{background:#ffebe9;color:#a40e26}
.badge.unknown{background:#eaeef2;color:#57606a}
tr.update-behind:not(.stale) td{background:#fffbea}
tr.update-rolled_back:not(.stale) td,tr.update-failed:not(.stale) td{background:#fff5f5}
tr.update-rolled_back:not(.stale) td:first-child,tr.update-failed:not(.stale) td:first-child{box-shadow:inset 4px 0 #bf8700}
.rejection,.clock,.reason{color:#9a6700}
td.wraps{white-space:normal;min-width:11em}
";

/// The whole page. Every value that comes from a device or the ids file
/// (labels, paths, messages) is escaped.
pub fn render_page(report: &FleetReport) -> String {
    let count = |state| report.devices.iter().filter(|d| d.state == state).count();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>logferry fleet status</title><style>{STYLE}</style></head><body>\n\
         <h1>logferry fleet</h1>\n<p class=\"summary\" id=\"summary\">{} devices: {} uploading, \
         <strong>{} stale</strong>, {} never uploaded &middot; stale after {} &middot; {} &middot; \
         refreshes every {REFRESH_SECS} s &middot; <a href=\"/v1/devices\">JSON</a> &middot; \
         <a href=\"/metrics\">metrics</a></p>\n",
        report.devices.len(),
        count(DeviceState::Ok),
        count(DeviceState::Stale),
        count(DeviceState::Never),
        human_duration(report.stale_after_seconds),
        when(&report.generated_at),
    );
    html.push_str(
        "<table id=\"devices\"><thead><tr><th>Device</th><th>ID</th><th>Status</th><th>Last upload</th><th>Last address</th>\
         <th class=\"num\">Files</th><th class=\"num\">Bytes</th><th class=\"num\">Files 24 h</th>\
         <th class=\"num\">Bytes 24 h</th><th>Last rejection</th><th>Release</th><th>Last update</th></tr></thead><tbody>\n",
    );
    for device in &report.devices {
        device_row(&mut html, device);
    }
    if report.devices.is_empty() {
        html.push_str("<tr><td colspan=\"12\">No devices are listed yet: add one with <code>receiver add-device</code>.</td></tr>\n");
    }
    html.push_str(
        "</tbody></table>\n<h2>Recent uploads</h2>\n<table id=\"recent\"><thead><tr><th>When</th><th>Device</th>\
         <th>ID</th><th>Path</th><th class=\"num\">Size</th><th>Outcome</th></tr></thead><tbody>\n",
    );
    for upload in &report.recent_uploads {
        let outcome = upload.outcome.as_str().replace('_', " ");
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"num\">{}</td><td>{outcome}</td></tr>",
            when(&upload.at),
            escape(upload.label.as_deref().unwrap_or("")),
            escape(&upload.device),
            escape(&upload.path),
            human_bytes(upload.size),
        );
    }
    if report.recent_uploads.is_empty() {
        html.push_str("<tr><td colspan=\"6\">Nothing received yet.</td></tr>\n");
    }
    html.push_str("</tbody></table>\n</body></html>\n");
    html
}

fn device_row(html: &mut String, device: &DeviceReport) {
    let (state, badge) = match device.state {
        DeviceState::Ok => ("ok", "uploading"),
        DeviceState::Stale => ("stale", "stale"),
        DeviceState::Never => ("never", "never uploaded"),
    };
    let last = match (&device.last_upload, device.seconds_since_last_upload) {
        (Some(at), Some(silent)) => format!("{}<br><small>{} ago</small>", when(at), human_duration(silent)),
        _ => "&mdash;".to_owned(),
    };
    let rejection = match &device.last_rejection {
        Some(r) => format!(
            "<span class=\"rejection\" title=\"{}\">{}</span><br><small>{} &middot; {}&times; since start</small>",
            escape(&r.message),
            escape(&r.code.as_str().replace('_', " ")),
            when(&r.at),
            device.rejections,
        ),
        None => "&mdash;".to_owned(),
    };
    let address = match device.last_address {
        Some(address) => format!("<code>{}</code>", escape(&address.to_string())),
        None => "&mdash;".to_owned(),
    };
    // Under the badge, not a column of its own: the table is wide already,
    // and the time it was seen is in the tooltip. Seconds off are the
    // network's and the rounding's, not worth a word.
    let clock = match &device.clock_offset {
        Some(c) if c.seconds.unsigned_abs() >= CLOCK_WORTH_SHOWING_SECS => format!(
            "<br><small class=\"clock\" title=\"seen {}\">clock {} {}</small>",
            when(&c.at),
            human_duration(c.seconds.unsigned_abs()),
            if c.seconds > 0 { "ahead" } else { "behind" },
        ),
        _ => String::new(),
    };
    // The update marks go on the row only when releases are published, so
    // a receiver that publishes nothing renders its rows as before.
    let (update_class, update_data) = match &device.update {
        Some(update) => {
            let name = update.state.as_str();
            (format!(" update-{name}"), format!(" data-update=\"{name}\""))
        }
        None => (String::new(), String::new()),
    };
    let (release, last_update) = device.update.as_ref().map_or_else(
        || ("&mdash;".to_owned(), "&mdash;".to_owned()),
        |update| (release_cell(update), last_update_cell(update)),
    );
    let _ = writeln!(
        html,
        "<tr class=\"{state}{update_class}\" data-state=\"{state}\" data-device=\"{id}\"{update_data}><td>{label}</td><td><code>{id}</code></td>\
         <td><span class=\"badge {state}\">{badge}</span>{clock}</td><td>{last}</td><td>{address}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"wraps\">{rejection}</td>\
         <td>{release}</td><td class=\"wraps\">{last_update}</td></tr>",
        device.files,
        human_bytes(device.bytes),
        device.files_24h,
        human_bytes(device.bytes_24h),
        id = escape(&device.device),
        label = escape(device.label.as_deref().unwrap_or("(no label)")),
    );
}

/// The state's badge over the short version the device runs, and the one
/// it should run when that differs.
fn release_cell(update: &UpdateStatus) -> String {
    let state = update.state.as_str();
    // Before its first poll nothing is known of what a device runs; after
    // one, no version means it runs none yet.
    let nothing = if update.state == UpdateState::Unknown { "not polled yet" } else { "none" };
    let short = |version: Option<Version>| version.map_or_else(|| nothing.to_owned(), |v| v.short());
    let mut cell = format!(
        "<span class=\"badge {state}\">{}</span><br><code title=\"{}\">{}</code>",
        state.replace('_', " "),
        escape(&update.current_version.map(|v| v.to_string()).unwrap_or_default()),
        short(update.current_version),
    );
    if update.state != UpdateState::Current {
        let _ = write!(
            cell,
            " &rarr; <code title=\"{}\">{}</code>",
            update.published_version,
            update.published_version.short()
        );
    }
    cell
}

/// The last reported attempt: outcome, version, when, and why (a device's
/// words, escaped).
fn last_update_cell(update: &UpdateStatus) -> String {
    match (update.last_outcome, update.last_version, &update.last_at) {
        (Some(outcome), Some(version), Some(at)) => {
            let reason = update
                .last_reason
                .as_deref()
                .map(|reason| format!("<br><small class=\"reason\">{}</small>", escape(reason)))
                .unwrap_or_default();
            format!(
                "{} <code>{}</code><br><small>{}</small>{reason}",
                escape(&outcome.as_str().replace('_', " ")),
                version.short(),
                when(at),
            )
        }
        _ => "&mdash;".to_owned(),
    }
}

/// `2026-11-24T09:05:13Z` → `2026-11-24 09:05:13 UTC`.
fn when(at: &Timestamp) -> String {
    format!("{} UTC", at.utc.trim_end_matches('Z').replace('T', " "))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_times() {
        assert_eq!(escape("<a href='x'>\"&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;");
        assert_eq!(when(&Timestamp { utc: "2026-11-24T09:05:13Z".to_owned(), unix: 0 }), "2026-11-24 09:05:13 UTC");
    }
}
