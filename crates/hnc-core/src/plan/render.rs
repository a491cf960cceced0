//! Human and JSON renderings of a plan (the `plan` command, logs and `/status`).

use std::fmt::Write;

use super::{Action, OpKind, Plan};
use crate::desired::Diagnostic;
use crate::model::{BackendSettings, CheckSpec, MatchKind, Sni};

/// A short description of backend settings, e.g. `http, roundrobin, check http GET /health`.
pub fn settings(s: &BackendSettings) -> String {
    let check = match &s.check {
        CheckSpec::None => "no check".to_string(),
        CheckSpec::Tcp { timing } => format!("check tcp every {}ms", timing.interval_ms),
        CheckSpec::Http {
            method,
            path,
            host,
            expect,
            timing,
        } => {
            let mut c = format!("check http {method} {path}");
            if let Some(h) = host {
                let _ = write!(c, " Host {h}");
            }
            if let Some((lo, hi)) = expect {
                let _ = write!(c, " expect {lo}-{hi}");
            }
            let _ = write!(c, " every {}ms", timing.interval_ms);
            c
        }
    };
    let mut out = format!("{}, {}, {check}", s.mode.as_str(), s.balance.as_str());
    if let Some(m) = s.maxconn {
        let _ = write!(out, ", maxconn {m}");
    }
    for (name, ms) in s.timeouts.entries() {
        if let Some(ms) = ms {
            let _ = write!(out, ", timeout {name} {ms}ms");
        }
    }
    if let Some(c) = &s.sticky {
        let _ = write!(out, ", sticky cookie {}", c.name);
    }
    if let Some(t) = &s.tls {
        let _ = write!(out, ", tls to servers");
        match &t.sni {
            Some(Sni::Host(h)) => {
                let _ = write!(out, " sni {h}");
            }
            Some(Sni::Auto) => out.push_str(" sni from the request"),
            None => {}
        }
        out.push_str(match t.ca_file {
            Some(_) => " verified",
            None => " unverified",
        });
    }
    out
}

fn describe(a: &Action) -> (char, String) {
    match a {
        Action::CreateBackend {
            backend,
            settings: s,
        } => ('+', format!("create backend {backend} ({})", settings(s))),
        Action::UpdateBackend {
            backend,
            settings: s,
            ..
        } => ('~', format!("update backend {backend} ({})", settings(s))),
        Action::DeleteBackend { backend } => ('-', format!("delete backend {backend}")),
        Action::AddServer {
            backend,
            server,
            endpoint,
            weight,
            check,
            ..
        } => (
            '+',
            format!(
                "add server {backend}/{server} {endpoint} weight {weight}{}",
                if *check { " with check" } else { "" }
            ),
        ),
        Action::GrowSlots { backend, to, slots } => {
            let filled: Vec<String> = slots
                .iter()
                .filter_map(|s| s.server.map(|x| format!("{} {}", s.name, x.endpoint)))
                .collect();
            (
                '+',
                format!(
                    "grow backend {backend} to {to} server slots (+{}{})",
                    slots.len(),
                    if filled.is_empty() {
                        String::new()
                    } else {
                        format!(", filled: {}", filled.join(", "))
                    }
                ),
            )
        }
        Action::ReaddServer {
            backend,
            server,
            endpoint,
            weight,
            ..
        } => (
            '+',
            format!("re-add server {backend}/{server} {endpoint} weight {weight} after the reload"),
        ),
        Action::RewriteMap { map, entries, .. } => (
            '~',
            format!("rewrite {} ({} entries)", map.map_file(), entries.len()),
        ),
        Action::ReadyServer { backend, server } => {
            ('~', format!("set server {backend}/{server} ready"))
        }
        Action::EnableCheck {
            backend, server, ..
        } => ('~', format!("enable health check on {backend}/{server}")),
        Action::SetWeight {
            backend,
            server,
            weight,
            ..
        } => ('~', format!("set weight of {backend}/{server} to {weight}")),
        Action::DrainServer { backend, server } => {
            ('~', format!("drain server {backend}/{server}"))
        }
        Action::MaintServer { backend, server } => {
            ('~', format!("put server {backend}/{server} in maintenance"))
        }
        Action::RemoveServer { backend, server } => {
            ('-', format!("remove server {backend}/{server}"))
        }
        Action::AddRoute { route, .. } if route.kind == MatchKind::Redirect => (
            '+',
            format!("redirect http://{}/ to https (301)", route.key),
        ),
        Action::RemoveRoute { route } if route.kind == MatchKind::Redirect => (
            '-',
            format!("stop redirecting http://{}/ to https", route.key),
        ),
        Action::AddRoute { route, backend } => {
            ('+', format!("route {route} → {}", target(backend)))
        }
        Action::SetRoute { route, backend, .. } => {
            ('~', format!("route {route} → {}", target(backend)))
        }
        Action::RemoveRoute { route } => ('-', format!("remove route {route}")),
        Action::InsertRouteRules { frontend, .. } => (
            '+',
            format!("insert the route-map rules into the frontend {frontend}"),
        ),
    }
}

/// A route's map value for people: the backend, and the bytes a path route strips.
fn target(value: &str) -> String {
    match value.split_once('/') {
        Some((backend, n)) => format!("{backend} (strips the first {n} bytes of the path)"),
        None => value.to_string(),
    }
}

/// The plan for people: one line per operation with its reason, then pending drains and the
/// diagnostics that explain what is not served.
pub fn human(plan: &Plan, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    if plan.is_empty() {
        out.push_str("No changes: HAProxy matches the desired state.\n");
    } else {
        let structural = plan
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::Structural)
            .count();
        let _ = writeln!(
            out,
            "Plan: {} operations ({structural} structural, {} runtime)",
            plan.ops.len(),
            plan.ops.len() - structural
        );
        for op in &plan.ops {
            let (sign, text) = describe(&op.action);
            let _ = writeln!(out, "  {sign} {text}    # {}", op.reason);
        }
        if let Some(reloads) = &plan.reloads {
            let _ = writeln!(out, "Reloads: {}", reloads.len());
            for r in reloads {
                let _ = writeln!(out, "  {}: {r}", r.kind().as_str());
            }
        }
    }
    if !plan.pending_drains.is_empty() {
        out.push_str("Draining:\n");
        for d in &plan.pending_drains {
            let _ = writeln!(
                out,
                "  {}/{}: {} sessions, removed within {}s",
                d.backend,
                d.server,
                d.sessions,
                d.remaining.as_secs()
            );
        }
    }
    if !diagnostics.is_empty() {
        out.push_str("Diagnostics:\n");
        for d in diagnostics {
            let _ = writeln!(out, "  [{}] {d}", d.reason.as_str());
        }
    }
    out
}

/// The plan as JSON: `{"changes": bool, "summary": {op: n}, "ops": [...], "reload_count": n,
/// "reloads": [...], "pending_drains": [...], "diagnostics": [...]}`.
pub fn json(plan: &Plan, diagnostics: &[Diagnostic]) -> serde_json::Value {
    serde_json::json!({
        "changes": !plan.is_empty(),
        "summary": plan.summary(),
        "ops": plan.ops,
        "reload_count": plan.reloads.as_ref().map(Vec::len),
        "reloads": plan.reloads,
        "pending_drains": plan.pending_drains,
        "diagnostics": diagnostics,
    })
}
