//! Per-field grammars for tag values. Tags are untrusted input written by job authors: every value
//! that reaches HAProxy (a config line, a map file line, a runtime command) passes one of these
//! first. None of them admits whitespace, control characters, quotes, `#`, `\` or `;`, so no value
//! can start a new config token, comment, map line or CLI command.

use std::time::Duration;

use crate::model::{Balance, MAX_TIMER_MS, MatchKind, Mode};

/// Characters no value may contain, whatever its field.
fn forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '#' | '\\' | ';')
}

fn no_forbidden(value: &str) -> Result<(), String> {
    match value.chars().find(|c| forbidden(*c)) {
        Some(c) if c.is_whitespace() => Err("contains whitespace".into()),
        Some(c) if c.is_control() => Err("contains a control character".into()),
        Some(c) => Err(format!(
            "contains `{c}`, which HAProxy would read as syntax"
        )),
        None => Ok(()),
    }
}

/// `true`/`false`, any case.
pub fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A host name: letters, digits, `-`, `_`, `.`; at most 253 characters; stored lower-case.
pub fn host(value: &str) -> Result<String, String> {
    no_forbidden(value)?;
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    if value.contains(':') {
        return Err(
            "must not contain a port (the Host header's port is ignored when matching)".into(),
        );
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "contains `{c}`; a host name has only letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// A domain tag's value under `kind`, as the key of its map entry. `*.example.com` is always the
/// suffix `.example.com`.
pub fn domain(value: &str, kind: MatchKind) -> Result<(MatchKind, String), String> {
    let (kind, key) = domain_key(value, kind)?;
    if is_dot_segment(&key) {
        return Err(format!(
            "`{key}` cannot be a route: it is a relative path segment, which URLs normalise away"
        ));
    }
    Ok((kind, key))
}

fn domain_key(value: &str, kind: MatchKind) -> Result<(MatchKind, String), String> {
    if kind != MatchKind::Regex
        && let Some(rest) = value.strip_prefix("*.")
    {
        let rest = host(rest)?;
        return Ok((MatchKind::Suffix, format!(".{rest}")));
    }
    match kind {
        MatchKind::Exact => {
            let h = host(value)?;
            if h.starts_with('.') || h.ends_with('.') {
                return Err("an exact domain cannot start or end with `.`".into());
            }
            Ok((kind, h))
        }
        MatchKind::Prefix | MatchKind::Suffix => Ok((kind, host(value)?)),
        MatchKind::Regex => Ok((kind, regex(value)?)),
        MatchKind::Path | MatchKind::Redirect => Err("is not a domain match type".into()),
    }
}

/// A host regex: PCRE2 (HAProxy's engine) compiles it, it cannot backtrack catastrophically
/// (see [`super::host_regex`]), and it holds no whitespace or syntax characters except `\\`
/// (regexes need it; drivers escape it where HAProxy's CLI would unescape it). Matched against
/// the lower-cased host; at most [`super::host_regex::MAX_LEN`] bytes.
pub fn regex(value: &str) -> Result<String, String> {
    no_forbidden(&value.replace('\\', ""))?;
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > super::host_regex::MAX_LEN {
        return Err(format!(
            "is longer than {} bytes",
            super::host_regex::MAX_LEN
        ));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "contains `{c}`; host names are ASCII (write international names in punycode)"
        ));
    }
    if value.ends_with("<<") {
        return Err("ends with `<<`, which HAProxy's CLI reads as the start of a payload".into());
    }
    super::host_regex::compile_like_haproxy(value)?;
    if let Some(risk) = super::host_regex::backtracking_risk(value) {
        return Err(format!(
            "could make HAProxy backtrack without bound on a crafted Host header: it has {risk}"
        ));
    }
    Ok(value.to_string())
}

/// Map keys that a URL path cannot carry as one segment (`.` and `..` are normalised away).
fn is_dot_segment(key: &str) -> bool {
    key == "." || key == ".."
}

/// An HTTP path for a health check: starts with `/`, URI characters only, at most 1024.
pub fn path(value: &str) -> Result<String, String> {
    no_forbidden(value)?;
    if !value.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if value.len() > 1024 {
        return Err("is longer than 1024 characters".into());
    }
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | '~'
                    | '/'
                    | '?'
                    | ':'
                    | '@'
                    | '!'
                    | '&'
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | '='
                    | '%'
            ))
    }) {
        return Err(format!(
            "contains `{c}`, which is not allowed in a check path"
        ));
    }
    Ok(value.to_string())
}

/// A path route's prefix (`path`): starts with `/`, at most
/// [`crate::path_rules::MAX_PATH_LEN`] bytes, path characters only (RFC 3986 unreserved, `/`, and
/// the sub-delimiters `!`, `(`, `)`, `+`, `,`, `=`, `:`, `@`). No `?` (it ends an exact path's key),
/// no `%` (HAProxy matches the path as sent, undecoded) and no dot segments (URLs normalise them).
pub fn route_path(value: &str) -> Result<String, String> {
    no_forbidden(value)?;
    if !value.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if value.len() > crate::path_rules::MAX_PATH_LEN {
        return Err(format!(
            "is longer than {} bytes",
            crate::path_rules::MAX_PATH_LEN
        ));
    }
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.' | '_' | '~' | '/' | '!' | '(' | ')' | '+' | ',' | '=' | ':' | '@'
            ))
    }) {
        return Err(format!(
            "contains `{c}`; a route path has only letters, digits and `-._~/!()+,=:@`"
        ));
    }
    if value.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("contains a `.` or `..` segment, which URLs normalise away".into());
    }
    Ok(value.to_string())
}

/// HTTP methods a health check may use.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

pub fn method(value: &str) -> Result<String, String> {
    let upper = value.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!("unknown method; accepted: {}", METHODS.join(", ")))
    }
}

/// A Host header for a health check: a host name, optionally with `:port`.
pub fn host_header(value: &str) -> Result<String, String> {
    let (name, port) = match value.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (value, None),
    };
    let name = host(name)?;
    match port {
        None => Ok(name),
        Some(p) => {
            let port: u16 = p.parse().map_err(|_| format!("`{p}` is not a port"))?;
            if port == 0 {
                return Err("port 0 is not a port".into());
            }
            Ok(format!("{name}:{port}"))
        }
    }
}

/// A duration with a unit (`500ms`, `5s`, `1m`), between 10 ms and 24 h, in whole milliseconds.
pub fn duration_ms(value: &str) -> Result<u32, String> {
    no_forbidden(value)?;
    if value.chars().all(|c| c.is_ascii_digit()) {
        return Err("needs a unit, e.g. 5s or 500ms".into());
    }
    let d = humantime::parse_duration(value).map_err(|e| format!("is not a duration ({e})"))?;
    if d < Duration::from_millis(10) || d > Duration::from_millis(u64::from(MAX_TIMER_MS)) {
        return Err("must be between 10ms and 24h".into());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be a whole number of milliseconds".into());
    }
    u32::try_from(d.as_millis()).map_err(|_| "is too long".to_string())
}

/// A cookie name: an RFC 6265 token of at most 64 characters (letters, digits and
/// `!$%&*+-.^_|~`; the token's other characters are syntax to HAProxy).
pub fn cookie_name(value: &str) -> Result<String, String> {
    no_forbidden(value)?;
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > 64 {
        return Err("is longer than 64 characters".into());
    }
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '!' | '$' | '%' | '&' | '*' | '+' | '-' | '.' | '^' | '_' | '|' | '~'
            ))
    }) {
        return Err(format!(
            "contains `{c}`; a cookie name has only letters, digits and !$%&*+-.^_|~"
        ));
    }
    Ok(value.to_string())
}

/// A whole number in `min..=max`.
pub fn number(value: &str, min: u32, max: u32) -> Result<u32, String> {
    let n: u32 = value
        .parse()
        .map_err(|_| format!("expected a whole number between {min} and {max}"))?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(n)
}

/// An accepted status range: `200` or `200-399`, within 100–599.
pub fn status_range(value: &str) -> Result<(u16, u16), String> {
    let parse = |s: &str| -> Result<u16, String> {
        let n: u16 = s
            .parse()
            .map_err(|_| format!("`{s}` is not an HTTP status"))?;
        if (100..=599).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is not an HTTP status (100-599)"))
        }
    };
    let (lo, hi) = match value.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let n = parse(value)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is empty"));
    }
    Ok((lo, hi))
}

pub fn balance(value: &str) -> Result<Balance, String> {
    if let Some(b) = Balance::parse(value) {
        return Ok(b);
    }
    const STATIC: [&str; 7] = [
        "static-rr",
        "source",
        "uri",
        "url_param",
        "hdr",
        "rdp-cookie",
        "hash",
    ];
    if STATIC.contains(&value) || value.starts_with("hdr(") || value.starts_with("rdp-cookie(") {
        Err(format!(
            "`{value}` cannot add or remove servers without a reload; use roundrobin, leastconn, first or random"
        ))
    } else {
        Err("unknown algorithm; accepted: roundrobin, leastconn, first, random".into())
    }
}

pub fn mode(value: &str) -> Result<Mode, String> {
    match value {
        "http" => Ok(Mode::Http),
        "tcp" => Ok(Mode::Tcp),
        _ => Err("expected http or tcp".into()),
    }
}

pub fn match_kind(value: &str) -> Result<MatchKind, String> {
    MatchKind::parse(value).ok_or_else(|| "expected exact, prefix, suffix or regex".into())
}

/// A HAProxy section name (for `backend.name`).
pub fn section_name(value: &str) -> Result<String, String> {
    no_forbidden(value)?;
    if crate::model::is_haproxy_name(value) && value.len() <= 128 {
        Ok(value.to_string())
    } else {
        Err("is not a valid HAProxy backend name (letters, digits, `-`, `_`, `.`, `:`; at most 128)".into())
    }
}

/// Whether `s` is safe anywhere a value can end up (used by property tests on the whole model).
pub fn is_safe_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(forbidden)
}

/// Whether `s` is a safe regex value: like [`is_safe_token`] but `\\` is allowed.
pub fn is_safe_regex(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c != '\\' && forbidden(c))
}
