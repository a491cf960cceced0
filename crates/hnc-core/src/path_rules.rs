//! Path routes as HAProxy finds them: one map, `hnc_path.map`, written at run time like the host
//! maps (no reload to add, move or remove a route), and the frontend rules that read it.
//!
//! Keys are `<host><path>` for a path on an exact domain and `<path>` for a path alone; an exact
//! path ends with `?`. The frontend looks up `<host><path>?` first (the request's host lower-cased,
//! its port removed; `path` excludes the query, so `?` only ends the sample), then, when no host
//! route claims the request, `<path>?`. `map_beg` indexes its keys in a prefix tree and returns
//! the longest key that prefixes the sample (HAProxy's pattern matching: string and prefix
//! patterns are stored in trees, "the first of the finest match" wins), whatever the order of the
//! map's lines. So host+path wins over host alone (the path lookup comes first), a longer prefix
//! over a shorter one, and an exact path (`/api?`, one byte longer than `/api`) over the prefix
//! `/api`.
//!
//! The value is the backend, or `<backend>/<n>` to strip the first `n` bytes of the path (the
//! matched path prefix) before the request reaches the server. `/` is not in HAProxy's name
//! grammar, so the backend part is unambiguous. HAProxy 2.6's `bytes` takes constant offsets
//! only, so the strip is spelled in binary: one `bytes(2^i)` per bit of `n` (`n` ≤ [`MAX_PATH_LEN`]).

use std::fmt;

use serde::Serialize;

use crate::model::MatchKind;

/// The longest path a route may have (and so the longest prefix stripped), in bytes.
pub const MAX_PATH_LEN: usize = 255;

/// The value of a host's entry in the redirect map ([`MatchKind::Redirect`]).
pub const REDIRECT_VALUE: &str = "https";

/// The variable holding the matched path route's map value.
pub const ROUTE_VAR: &str = crate::model::PATH_ROUTE_VAR;

/// The map key of a path route: on the exact host `host` or on any host, a prefix or exact.
pub fn path_key(host: Option<&str>, path: &str, exact: bool) -> String {
    format!(
        "{}{path}{}",
        host.unwrap_or_default(),
        if exact { "?" } else { "" }
    )
}

/// The map value of a path route to `backend` that strips `strip` bytes (the path prefix).
pub fn route_value(backend: &str, strip: Option<usize>) -> String {
    match strip {
        Some(n) if n > 0 => format!("{backend}/{n}"),
        _ => backend.to_string(),
    }
}

/// The backend a map value routes to (a path route's value may carry `/<strip>`).
pub fn route_backend(value: &str) -> &str {
    value.split_once('/').map_or(value, |(b, _)| b)
}

/// One `http-request` rule of the frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RequestRule {
    pub action: RequestAction,
    /// The `if` condition, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cond: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RequestAction {
    /// `set-var(<scope>.<name>) <expr>`.
    SetVar {
        scope: String,
        name: String,
        expr: String,
    },
    /// `set-path <fmt>`.
    SetPath { fmt: String },
    /// `redirect scheme <scheme> code <code>`.
    RedirectScheme { scheme: String, code: u16 },
}

impl fmt::Display for RequestRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            RequestAction::SetVar { scope, name, expr } => {
                write!(f, "http-request set-var({scope}.{name}) {expr}")?;
            }
            RequestAction::SetPath { fmt } => write!(f, "http-request set-path {fmt}")?,
            RequestAction::RedirectScheme { scheme, code } => {
                write!(f, "http-request redirect scheme {scheme} code {code}")?;
            }
        }
        match &self.cond {
            Some(c) => write!(f, " if {c}"),
            None => Ok(()),
        }
    }
}

fn set_var(name: &str, expr: String, cond: Option<String>) -> RequestRule {
    RequestRule {
        action: RequestAction::SetVar {
            scope: "txn".into(),
            name: name.into(),
            expr,
        },
        cond,
    }
}

/// The frontend's `http-request` rules that find the path route (into [`ROUTE_VAR`]) and strip
/// its prefix when the route says so, in order. They go before the `use_backend` rules of
/// [`crate::model::route_rules`].
pub fn request_rules(maps_dir: &str) -> Vec<RequestRule> {
    let dir = maps_dir.trim_end_matches('/');
    let map = format!("{dir}/{}", MatchKind::Path.map_file());
    let no_host_route: Vec<String> = MatchKind::HOSTS
        .iter()
        .map(|k| {
            format!(
                "!{{ {} -m found }}",
                crate::model::host_lookup(*k, maps_dir)
            )
        })
        .collect();
    let mut rules = vec![
        // Plain HTTP to a host whose service asks for https: a 301 before any routing.
        RequestRule {
            action: RequestAction::RedirectScheme {
                scheme: "https".into(),
                code: 301,
            },
            cond: Some(format!(
                "!{{ ssl_fc }} {{ req.hdr(host),lower,field(1,:),map_str({dir}/{}) -m found }}",
                MatchKind::Redirect.map_file()
            )),
        },
        set_var("hnc_path", "path".into(), None),
        set_var(
            "hnc_route",
            format!("req.hdr(host),lower,field(1,:),concat(,txn.hnc_path,?),map_beg({map})"),
            None,
        ),
        set_var(
            "hnc_route",
            format!("var(txn.hnc_path),concat(?),map_beg({map})"),
            Some(format!(
                "!{{ var({ROUTE_VAR}) -m found }} {}",
                no_host_route.join(" ")
            )),
        ),
        set_var(
            "hnc_strip",
            format!("var({ROUTE_VAR}),field(2,/)"),
            Some(format!("{{ var({ROUTE_VAR}) -m sub / }}")),
        ),
        set_var(
            "hnc_rest",
            "var(txn.hnc_path)".into(),
            Some("{ var(txn.hnc_strip) -m found }".into()),
        ),
    ];
    // The highest bit of the longest strip, then every lower one.
    let mut bit = 1usize << (usize::BITS - 1 - MAX_PATH_LEN.leading_zeros());
    while bit > 0 {
        rules.push(set_var(
            "hnc_rest",
            format!("var(txn.hnc_rest),bytes({bit})"),
            Some(format!("{{ var(txn.hnc_strip),and({bit}) -m int gt 0 }}")),
        ));
        bit /= 2;
    }
    rules.push(RequestRule {
        action: RequestAction::SetPath {
            fmt: "/%[var(txn.hnc_rest)]".into(),
        },
        cond: Some("{ var(txn.hnc_strip) -m found } !{ var(txn.hnc_rest) -m beg / }".into()),
    });
    rules.push(RequestRule {
        action: RequestAction::SetPath {
            fmt: "%[var(txn.hnc_rest)]".into(),
        },
        cond: Some("{ var(txn.hnc_strip) -m found } { var(txn.hnc_rest) -m beg / }".into()),
    });
    rules
}

/// The frontend lines that route by the connector's maps, as a user pastes them (runtime driver)
/// and the Data Plane API driver inserts them: request rules, then `use_backend` rules.
pub fn frontend_lines(maps_dir: &str) -> Vec<String> {
    request_rules(maps_dir)
        .iter()
        .map(ToString::to_string)
        .chain(
            crate::model::route_rules(maps_dir)
                .into_iter()
                .map(|(e, c)| format!("use_backend {e} if {c}")),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_the_strip_and_the_backend_reads_back() {
        assert_eq!(route_value("api", None), "api");
        assert_eq!(route_value("api", Some(0)), "api");
        assert_eq!(route_value("ns.api", Some(4)), "ns.api/4");
        assert_eq!(route_backend("ns.api/4"), "ns.api");
        assert_eq!(route_backend("a:b"), "a:b");
        assert_eq!(path_key(Some("x.test"), "/api", false), "x.test/api");
        assert_eq!(path_key(None, "/api", true), "/api?");
    }

    #[test]
    fn the_strip_is_spelled_in_bits_up_to_the_longest_path() {
        let rules = request_rules("/m/");
        let bits: usize = rules
            .iter()
            .filter_map(|r| match &r.action {
                RequestAction::SetVar { expr, .. } => expr
                    .strip_prefix("var(txn.hnc_rest),bytes(")?
                    .strip_suffix(')')?
                    .parse::<usize>()
                    .ok(),
                RequestAction::SetPath { .. } | RequestAction::RedirectScheme { .. } => None,
            })
            .sum();
        assert_eq!(bits, MAX_PATH_LEN);
        let text = frontend_lines("/m/").join("\n");
        assert!(text.contains("map_beg(/m/hnc_path.map)"), "{text}");
        assert!(text.starts_with("http-request redirect scheme https code 301 if !{ ssl_fc } { req.hdr(host),lower,field(1,:),map_str(/m/hnc_redirect.map) -m found }\nhttp-request set-var(txn.hnc_path) path\n"), "{text}");
        // Lines hold no line breaks; the path route's use_backend comes first.
        let first_use = text.lines().position(|l| l.starts_with("use_backend"));
        assert_eq!(
            text.lines().nth(first_use.unwrap_or(0)),
            Some("use_backend %[var(txn.hnc_route),field(1,/)] if { var(txn.hnc_route) -m found }")
        );
    }
}
