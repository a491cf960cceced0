//! `diff(desired, live, now, policy)`: per backend, then per server, then per route. It never
//! emits an operation on an object the connector does not own, never removes a route while its
//! backend is still desired or still draining, and treats drains as state, not timers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{Action, Op, PendingDrain, Plan};
use crate::desired::{Desired, DesiredBackend, Ownership, Policy};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{AdminState, BackendSettings, Endpoint, is_owned_server};

/// Computes the plan that takes `live` to `desired`.
pub fn diff(desired: &Desired, live: &Live, now: Instant, policy: &Policy) -> Plan {
    let mut plan = Plan::default();
    // Backends whose owned servers are not all gone after this plan (drains in progress).
    let mut still_draining: BTreeSet<&str> = BTreeSet::new();

    // Both maps are sorted by name: walk them together instead of looking every name up.
    let pairs = merge_by_name(&desired.backends, &live.backends)
        .into_iter()
        .filter(|(_, d, l)| {
            d.is_some()
                || l.is_some_and(|b| b.owned || b.servers.keys().any(|s| is_owned_server(s)))
        });
    for (name, want, have) in pairs {
        if !desired.frozen.is_empty() && desired.frozen.contains(name) {
            continue;
        }
        match (want, have) {
            (Some(d), None) => {
                if d.ownership == Ownership::Owned {
                    plan.ops.push(Op::new(
                        Action::CreateBackend {
                            backend: name.to_string(),
                            settings: d.settings.clone(),
                        },
                        format!("new service {}", d.service),
                    ));
                    // Instances whose Nomad checks fail wait for them to pass.
                    for (endpoint, spec) in d.servers.iter().filter(|(_, s)| !s.failing_checks) {
                        plan.ops.push(add_server(name, d, endpoint, spec.weight));
                    }
                }
                // Adopted and custom backends exist by construction; nothing to do without one.
            }
            (Some(d), Some(l)) => {
                if d.ownership == Ownership::Owned {
                    if !l.owned {
                        // Never touch a backend that is not ours.
                        continue;
                    }
                    let changed = changed_fields(l.settings.as_ref(), &d.settings);
                    if !changed.is_empty() {
                        plan.ops.push(Op::new(
                            Action::UpdateBackend {
                                backend: name.to_string(),
                                settings: d.settings.clone(),
                                changed: changed.iter().map(|s| (*s).to_string()).collect(),
                            },
                            format!("{} changed for service {}", changed.join(", "), d.service),
                        ));
                    }
                }
                if servers(&mut plan, name, Some(d), l, now, policy) {
                    still_draining.insert(name);
                }
            }
            (None, Some(l)) => {
                let draining = servers(&mut plan, name, None, l, now, policy);
                if draining {
                    still_draining.insert(name);
                } else if l.owned {
                    plan.ops.push(Op::new(
                        Action::DeleteBackend {
                            backend: name.to_string(),
                        },
                        "no registration of its service is left",
                    ));
                }
            }
            (None, None) => {}
        }
    }

    routes(&mut plan, desired, live, &still_draining);
    if live.route_rules_missing {
        let fe = live.frontend.clone().unwrap_or_default();
        plan.ops.push(Op::new(
            Action::InsertRouteRules {
                frontend: fe.frontend,
                at: fe.count,
                rules: fe.missing,
                request_rules: fe.missing_requests,
                request_at: fe.request_count,
                create_maps: fe.missing_maps,
            },
            "the frontend lacks the connector's host-map rules",
        ));
    }
    plan.sort();
    plan
}

/// The names of both maps in order, each with its entry on either side.
fn merge_by_name<'a>(
    desired: &'a BTreeMap<String, DesiredBackend>,
    live: &'a BTreeMap<String, LiveBackend>,
) -> Vec<(&'a str, Option<&'a DesiredBackend>, Option<&'a LiveBackend>)> {
    let mut out = Vec::with_capacity(desired.len().max(live.len()));
    let mut d = desired.iter().peekable();
    let mut l = live.iter().peekable();
    loop {
        let next = match (d.peek(), l.peek()) {
            (None, None) => break,
            (Some((dn, _)), Some((ln, _))) => dn.as_str().cmp(ln.as_str()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        match next {
            std::cmp::Ordering::Less => {
                if let Some((n, db)) = d.next() {
                    out.push((n.as_str(), Some(db), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((n, lb)) = l.next() {
                    out.push((n.as_str(), None, Some(lb)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((n, db)), Some((_, lb))) = (d.next(), l.next()) {
                    out.push((n.as_str(), Some(db), Some(lb)));
                }
            }
        }
    }
    out
}

fn add_server(backend: &str, d: &DesiredBackend, endpoint: &Endpoint, weight: u16) -> Op {
    Op::new(
        Action::AddServer {
            backend: backend.to_string(),
            server: endpoint.server_name(),
            endpoint: *endpoint,
            weight,
            check: d.settings.check.is_enabled(),
            maxconn: d.settings.maxconn,
            timing: d.settings.check.timing().copied(),
        },
        format!("instance {endpoint} of {} registered", d.service),
    )
}

/// The managed fields that differ; all of them when the live settings could not be read.
fn changed_fields(live: Option<&BackendSettings>, want: &BackendSettings) -> Vec<&'static str> {
    let Some(l) = live else {
        return vec![
            "mode",
            "balance",
            "check",
            "maxconn",
            "timeout.server",
            "timeout.connect",
            "timeout.tunnel",
            "sticky",
            "server.tls",
        ];
    };
    let mut out = Vec::new();
    if l.mode != want.mode {
        out.push("mode");
    }
    if l.balance != want.balance {
        out.push("balance");
    }
    if l.check != want.check {
        out.push("check");
    }
    if l.maxconn != want.maxconn {
        out.push("maxconn");
    }
    for ((name, have), (_, wanted)) in l
        .timeouts
        .entries()
        .into_iter()
        .zip(want.timeouts.entries())
    {
        if have != wanted {
            out.push(match name {
                "server" => "timeout.server",
                "connect" => "timeout.connect",
                _ => "timeout.tunnel",
            });
        }
    }
    if l.sticky != want.sticky {
        out.push("sticky");
    }
    if l.tls != want.tls {
        out.push("server.tls");
    }
    out
}

/// Server operations for one backend. Returns whether owned servers remain after this plan that
/// are not desired (drains in progress).
fn servers(
    plan: &mut Plan,
    backend: &str,
    want: Option<&DesiredBackend>,
    live: &LiveBackend,
    now: Instant,
    policy: &Policy,
) -> bool {
    // Merge-join the desired endpoints (sorted) with the owned live servers sorted by endpoint:
    // no allocation per server, which matters at tens of thousands of servers.
    let mut owned: Vec<(Endpoint, &LiveServer)> = Vec::with_capacity(live.servers.len());
    let mut leaving: Vec<(&LiveServer, &'static str)> = Vec::new();
    for s in live.servers.values().filter(|s| is_owned_server(&s.name)) {
        match s.endpoint {
            Some(e) => owned.push((e, s)),
            None => leaving.push((s, "server has no usable address")),
        }
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let wanted = want
        .into_iter()
        .flat_map(|d| d.servers.iter().map(move |(e, spec)| (e, spec, d)));
    let mut rest = owned.as_slice();
    for (endpoint, spec, d) in wanted {
        // Live servers for endpoints before this one are not desired.
        while let Some(((e, s), tail)) = rest.split_first()
            && e < endpoint
        {
            leaving.push((s, "instance deregistered"));
            rest = tail;
        }
        let run = rest.iter().take_while(|(e, _)| e == endpoint).count();
        let (list, tail) = rest.split_at(run);
        rest = tail;
        if list.is_empty() {
            // A new instance whose Nomad checks already fail waits for them to pass.
            if !spec.failing_checks {
                plan.ops.push(add_server(backend, d, endpoint, spec.weight));
            }
            continue;
        }
        // Keep the server with the endpoint's own name (else the first); extra ones leave.
        let keep = if list.len() == 1 {
            list[0].1
        } else {
            let own = endpoint.server_name();
            let keep = list
                .iter()
                .find(|(_, s)| s.name == own)
                .map_or(list[0].1, |(_, s)| *s);
            for (_, s) in list.iter().filter(|(_, s)| s.name != keep.name) {
                leaving.push((s, "duplicate server for the same instance"));
            }
            keep
        };
        let server = &keep.name;
        if spec.failing_checks {
            gate(plan, backend, keep, endpoint, now, policy);
        }
        match keep.admin {
            _ if spec.failing_checks => {}
            AdminState::Ready => {}
            AdminState::Drain => plan.ops.push(Op::new(
                Action::ReadyServer {
                    backend: backend.to_string(),
                    server: server.clone(),
                },
                format!("instance {endpoint} registered again while draining"),
            )),
            AdminState::Maint => plan.ops.push(Op::new(
                Action::ReadyServer {
                    backend: backend.to_string(),
                    server: server.clone(),
                },
                format!("drift: server for registered instance {endpoint} was in maintenance"),
            )),
        }
        if d.settings.check.is_enabled() && !keep.check_enabled {
            plan.ops.push(Op::new(
                Action::EnableCheck {
                    backend: backend.to_string(),
                    server: server.clone(),
                    endpoint: *endpoint,
                    weight: keep.weight,
                },
                "drift: health check was not enabled",
            ));
        }
        if keep.weight != spec.weight {
            plan.ops.push(Op::new(
                Action::SetWeight {
                    backend: backend.to_string(),
                    server: server.clone(),
                    weight: spec.weight,
                    endpoint: *endpoint,
                },
                format!("weight {} → {}", keep.weight, spec.weight),
            ));
        }
    }
    for (_, s) in rest {
        leaving.push((s, "instance deregistered"));
    }

    let mut remaining = false;
    for (s, why) in leaving {
        match s.admin {
            AdminState::Ready => {
                plan.ops.push(Op::new(
                    Action::DrainServer {
                        backend: backend.to_string(),
                        server: s.name.clone(),
                    },
                    why,
                ));
                remaining = true;
            }
            AdminState::Drain | AdminState::Maint => {
                let elapsed = s.drain_started.map_or(std::time::Duration::ZERO, |t| {
                    now.saturating_duration_since(t)
                });
                if s.sessions == 0 || elapsed >= policy.drain_timeout {
                    let reason = if s.sessions == 0 {
                        format!("{why}; drained (no sessions left)")
                    } else {
                        format!("{why}; drain timed out with {} sessions", s.sessions)
                    };
                    plan.ops.push(Op::new(
                        Action::RemoveServer {
                            backend: backend.to_string(),
                            server: s.name.clone(),
                        },
                        reason,
                    ));
                } else {
                    remaining = true;
                    plan.pending_drains.push(PendingDrain {
                        backend: backend.to_string(),
                        server: s.name.clone(),
                        sessions: s.sessions,
                        remaining: policy.drain_timeout.saturating_sub(elapsed),
                    });
                }
            }
        }
    }
    remaining
}

fn routes(plan: &mut Plan, desired: &Desired, live: &Live, still_draining: &BTreeSet<&str>) {
    for (route, backend) in &desired.routes {
        match live.routes.get(route) {
            Some(current) if current.len() == 1 && &current[0] == backend => {}
            None => plan.ops.push(Op::new(
                Action::AddRoute {
                    route: route.clone(),
                    backend: backend.clone(),
                },
                format!("{route} → {backend}"),
            )),
            Some(current) => plan.ops.push(Op::new(
                Action::SetRoute {
                    route: route.clone(),
                    backend: backend.clone(),
                    entries: current.len(),
                },
                if current.len() > 1 {
                    format!(
                        "{route} has {} entries; keeping one → {backend}",
                        current.len()
                    )
                } else {
                    let from = current.first().map_or("nothing", String::as_str);
                    format!("{route} moves from {from} to {backend}")
                },
            )),
        }
    }
    for (route, targets) in &live.routes {
        if desired.routes.contains_key(route) {
            continue;
        }
        let held = targets.iter().find(|t| {
            let t = crate::path_rules::route_backend(t);
            desired.frozen.contains(t)
                || (still_draining.contains(t) && !desired.backends.contains_key(t))
        });
        if held.is_some() {
            continue;
        }
        plan.ops.push(Op::new(
            Action::RemoveRoute {
                route: route.clone(),
            },
            format!("no service claims {route} any more"),
        ));
    }
}

/// A kept server whose Nomad checks fail: drained first (its sessions finish), then put in
/// maintenance once no session is left or the drain timeout has passed. Never removed for it.
fn gate(
    plan: &mut Plan,
    backend: &str,
    server: &LiveServer,
    endpoint: &Endpoint,
    now: Instant,
    policy: &Policy,
) {
    let op = |action, why: String| Op::new(action, why);
    match server.admin {
        AdminState::Ready => plan.ops.push(op(
            Action::DrainServer {
                backend: backend.to_string(),
                server: server.name.clone(),
            },
            format!("Nomad checks of instance {endpoint} fail: draining"),
        )),
        AdminState::Drain => {
            let elapsed = server.drain_started.map_or(std::time::Duration::ZERO, |t| {
                now.saturating_duration_since(t)
            });
            if server.sessions == 0 || elapsed >= policy.drain_timeout {
                plan.ops.push(op(
                    Action::MaintServer {
                        backend: backend.to_string(),
                        server: server.name.clone(),
                    },
                    format!(
                        "Nomad checks of instance {endpoint} fail; drained ({} sessions left)",
                        server.sessions
                    ),
                ));
            } else {
                plan.pending_drains.push(PendingDrain {
                    backend: backend.to_string(),
                    server: server.name.clone(),
                    sessions: server.sessions,
                    remaining: policy.drain_timeout.saturating_sub(elapsed),
                });
            }
        }
        AdminState::Maint => {}
    }
}
