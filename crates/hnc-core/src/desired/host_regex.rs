//! Regex domains, checked the way HAProxy will run them.
//!
//! HAProxy compiles `map_reg` keys with PCRE2 (no UTF mode, case-sensitive here because the host
//! is lower-cased first). A pattern is accepted only when:
//! - PCRE2 itself compiles it with those options (the `pcre2` crate links the same library
//!   HAProxy uses), so a pattern Rust's `regex` would accept but PCRE2 rejects (`(?u)x`) never
//!   reaches a map file, and a PCRE2-only one (`(?<=x)y`) is not refused for nothing;
//! - it cannot backtrack catastrophically: no repeated group that holds a repetition or an
//!   alternation (`^(a+)+$`, `(a|aa)*`), no two repetitions in a row (`\d+\d+`, `.*.*`), no
//!   back-references, recursion or callouts (matching with them is not bounded by the pattern);
//!   at most [`MAX_REPEATS`] unbounded repetitions in all.
//!
//! The structural rules are conservative: some safe patterns are refused (for example
//! `^([a-z]+\.)*example\.com$`, which a suffix domain `*.example.com` expresses without a regex).
//! Every refusal says which rule it broke.

/// The longest regex accepted, in bytes.
pub const MAX_LEN: usize = 512;

/// The most unbounded repetitions (`*`, `+`, `{n,}`) one pattern may hold.
pub const MAX_REPEATS: usize = 4;

/// Compiles `pattern` with PCRE2 as HAProxy does; the error is PCRE2's own message.
pub fn compile_like_haproxy(pattern: &str) -> Result<(), String> {
    pcre2::bytes::RegexBuilder::new()
        .utf(false)
        .caseless(false)
        .build(pattern)
        .map(|_| ())
        .map_err(|e| {
            format!("is not a valid regular expression for PCRE2, the engine HAProxy uses: {e}")
        })
}

/// One token of a pattern, as far as backtracking is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Atom {
    /// A literal, an escape, a class or `.`: matches one character.
    One,
    /// A group `( … )`; `inner_repeat` and `alternation` describe what it holds.
    Group {
        inner_repeat: bool,
        alternation: bool,
    },
    /// An anchor or assertion that matches no character (`^`, `$`, `\b`, a lookaround).
    Empty,
}

/// How often a quantifier lets its atom repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// At most once (`?`, `{0,1}`, `{1}`, no quantifier).
    AtMostOnce,
    /// A bounded count above one (`{2,5}`).
    Bounded,
    /// Unbounded (`*`, `+`, `{n,}`).
    Unbounded,
}

struct Frame {
    inner_repeat: bool,
    alternation: bool,
    /// Whether the last quantified atom at this level repeats (for "two repetitions in a row").
    last_repeats: bool,
    lookaround: bool,
}

/// Why `pattern` could backtrack without bound, if it could. Call after PCRE2 compiled it (the
/// scan assumes balanced groups and classes, and reports anything it cannot follow as a risk).
pub fn backtracking_risk(pattern: &str) -> Option<String> {
    let b = pattern.as_bytes();
    let mut i = 0;
    let mut stack: Vec<Frame> = vec![Frame {
        inner_repeat: false,
        alternation: false,
        last_repeats: false,
        lookaround: false,
    }];
    let mut unbounded = 0usize;
    while i < b.len() {
        let (atom, next) = match b[i] {
            b'\\' => match escape(b, i) {
                Ok(x) => x,
                Err(e) => return Some(e),
            },
            b'[' => match class_end(b, i) {
                Some(end) => (Atom::One, end),
                None => return Some("a character class it cannot follow".into()),
            },
            b'(' => {
                let rest = &b[i + 1..];
                if rest.starts_with(b"?#") {
                    // A comment: skip it whole.
                    match b[i..].iter().position(|c| *c == b')') {
                        Some(p) => {
                            i += p + 1;
                            continue;
                        }
                        None => return Some("an unterminated comment".into()),
                    }
                }
                if rest.starts_with(b"*") {
                    return Some("a backtracking control verb `(*…)`".into());
                }
                if let Some(after) = rest.strip_prefix(b"?") {
                    match after.first() {
                        Some(b'R' | b'0'..=b'9' | b'+' | b'-' | b'&') => {
                            return Some("recursion or a subroutine call".into());
                        }
                        Some(b'P') if matches!(after.get(1), Some(b'>' | b'=')) => {
                            return Some("recursion or a back-reference".into());
                        }
                        Some(b'C') => return Some("a callout".into()),
                        Some(b'(') => return Some("a conditional group".into()),
                        _ => {}
                    }
                }
                let lookaround = rest.starts_with(b"?=")
                    || rest.starts_with(b"?!")
                    || rest.starts_with(b"?<=")
                    || rest.starts_with(b"?<!");
                stack.push(Frame {
                    inner_repeat: false,
                    alternation: false,
                    last_repeats: false,
                    lookaround,
                });
                i += 1;
                continue;
            }
            b')' => {
                let Some(frame) = stack.pop().filter(|_| !stack.is_empty()) else {
                    return Some("an unbalanced `)`".into());
                };
                let atom = if frame.lookaround {
                    Atom::Empty
                } else {
                    Atom::Group {
                        inner_repeat: frame.inner_repeat,
                        alternation: frame.alternation,
                    }
                };
                if let Some(parent) = stack.last_mut() {
                    parent.inner_repeat |= frame.inner_repeat;
                }
                (atom, i + 1)
            }
            b'|' => {
                if let Some(f) = stack.last_mut() {
                    f.alternation = true;
                    f.last_repeats = false;
                }
                i += 1;
                continue;
            }
            b'^' | b'$' => (Atom::Empty, i + 1),
            _ => {
                // One character (a multi-byte UTF-8 character is a run of literal bytes for
                // PCRE2 without UTF: each byte an atom; only the last can be quantified).
                (Atom::One, i + 1)
            }
        };
        let (repeat, after) = match quantifier(b, next) {
            Ok(q) => q,
            Err(e) => return Some(e),
        };
        i = after;
        let Some(frame) = stack.last_mut() else {
            return Some("an unbalanced `)`".into());
        };
        if atom == Atom::Empty {
            continue;
        }
        if repeat == Repeat::Unbounded {
            unbounded += 1;
            if unbounded > MAX_REPEATS {
                return Some(format!(
                    "more than {MAX_REPEATS} unbounded repetitions (`*`, `+`, `{{n,}}`)"
                ));
            }
        }
        let repeats = repeat != Repeat::AtMostOnce;
        if let Atom::Group {
            inner_repeat,
            alternation,
        } = atom
            && repeats
            && (inner_repeat || alternation)
        {
            return Some(if inner_repeat {
                "a nested repetition (a repeated group that repeats inside, like `(a+)+`)".into()
            } else {
                "a repeated alternation (like `(a|aa)*`)".into()
            });
        }
        if repeats && frame.last_repeats && repeat == Repeat::Unbounded {
            return Some(
                "two repetitions in a row that can match the same text (like `\\d+\\d+` or `.*.*`)"
                    .into(),
            );
        }
        frame.last_repeats = repeats;
        if repeats {
            frame.inner_repeat = true;
        }
    }
    if stack.len() != 1 {
        return Some("an unbalanced `(`".into());
    }
    None
}

/// The atom an escape at `i` stands for and where it ends.
fn escape(b: &[u8], i: usize) -> Result<(Atom, usize), String> {
    let Some(&c) = b.get(i + 1) else {
        return Err("a trailing `\\`".into());
    };
    match c {
        b'1'..=b'9' | b'g' | b'k' => Err("a back-reference".into()),
        b'Q' => {
            // \Q…\E quotes literally; the whole run is literal characters.
            let end = b[i + 2..]
                .windows(2)
                .position(|w| w == b"\\E")
                .map_or(b.len(), |p| i + 2 + p + 2);
            Ok((Atom::One, end))
        }
        b'b' | b'B' | b'A' | b'z' | b'Z' | b'G' | b'K' => Ok((Atom::Empty, i + 2)),
        b'x' | b'o' | b'p' | b'P' | b'N' | b'c' if b.get(i + 2) == Some(&b'{') => {
            match b[i + 2..].iter().position(|x| *x == b'}') {
                Some(p) => Ok((Atom::One, i + 2 + p + 1)),
                None => Err("an unterminated escape".into()),
            }
        }
        b'x' => {
            let hex = b[i + 2..]
                .iter()
                .take(2)
                .take_while(|x| x.is_ascii_hexdigit())
                .count();
            Ok((Atom::One, i + 2 + hex))
        }
        b'c' | b'p' | b'P' => Ok((Atom::One, (i + 3).min(b.len()))),
        _ => Ok((Atom::One, i + 2)),
    }
}

/// Where a character class opening at `i` ends (one past its `]`).
fn class_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'^') {
        j += 1;
    }
    // A `]` right at the start is a literal.
    if b.get(j) == Some(&b']') {
        j += 1;
    }
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'[' if b.get(j + 1) == Some(&b':') => {
                let close = b[j + 2..].windows(2).position(|w| w == b":]")?;
                j += 2 + close + 2;
            }
            b']' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The quantifier at `i` (if any) and where it ends, lazy and possessive suffixes included.
fn quantifier(b: &[u8], i: usize) -> Result<(Repeat, usize), String> {
    let (repeat, mut end) = match b.get(i) {
        Some(b'*' | b'+') => (Repeat::Unbounded, i + 1),
        Some(b'?') => (Repeat::AtMostOnce, i + 1),
        Some(b'{') => match counted(b, i) {
            Some((max, end)) => {
                let repeat = match max {
                    None => Repeat::Unbounded,
                    Some(m) if m <= 1 => Repeat::AtMostOnce,
                    Some(_) => Repeat::Bounded,
                };
                (repeat, end)
            }
            // Not a quantifier: PCRE2 reads `{` as a literal.
            None => (Repeat::AtMostOnce, i),
        },
        _ => (Repeat::AtMostOnce, i),
    };
    if end > i && matches!(b.get(end), Some(b'?' | b'+')) {
        end += 1;
    }
    if end > i
        && (matches!(b.get(end), Some(b'*' | b'+' | b'?'))
            || (b.get(end) == Some(&b'{') && counted(b, end).is_some()))
    {
        return Err("a quantifier applied to a quantifier".into());
    }
    Ok((repeat, end))
}

/// A counted quantifier `{n}`, `{n,}` or `{n,m}` at `i`: (m, end); `m` is `None` when unbounded.
fn counted(b: &[u8], i: usize) -> Option<(Option<u64>, usize)> {
    let close = i + b[i..].iter().position(|c| *c == b'}')?;
    let inner = std::str::from_utf8(&b[i + 1..close]).ok()?;
    let max = match inner.split_once(',') {
        None => Some(inner.trim().parse::<u64>().ok()?),
        Some((lo, hi)) => {
            if !lo.trim().is_empty() {
                lo.trim().parse::<u64>().ok()?;
            }
            if hi.trim().is_empty() {
                None
            } else {
                Some(hi.trim().parse::<u64>().ok()?)
            }
        }
    };
    Some((max, close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre2_decides_what_compiles() {
        // Rust's `regex` accepts `(?u)x`; PCRE2 (and so HAProxy) does not.
        assert!(compile_like_haproxy("(?u)x").is_err());
        // PCRE2 accepts look-behind, which Rust's `regex` does not.
        assert!(compile_like_haproxy("^(?<=x)y$").is_ok());
        assert!(compile_like_haproxy("^api\\.example\\.com$").is_ok());
        assert!(compile_like_haproxy("(unclosed").is_err());
    }

    #[test]
    fn catastrophic_shapes_are_refused() {
        for p in [
            "^(a+)+$",
            "^(a*)*$",
            "(a|aa)*",
            "^(a|a)+$",
            "^([a-z]+\\.)*example\\.com$",
            "\\d+\\d+",
            ".*.*=.*",
            "^(\\w+\\s?)*$",
            "(x+x+)+y",
            "^(a{1,10}){2,}$",
            "(a)\\1",
            "(?R)",
            "(?1)(a)",
            "(*LIMIT_MATCH=1)a",
            "a.*b.*c.*d.*e.*f",
        ] {
            assert!(backtracking_risk(p).is_some(), "{p} should be refused");
        }
    }

    #[test]
    fn ordinary_host_patterns_pass() {
        for p in [
            "^api\\.example\\.com$",
            "^b[0-9]+\\.example\\.test$",
            "^(www\\.)?example\\.com$",
            "^(api|www)\\.example\\.com$",
            "^[a-z0-9-]+\\.apps\\.example\\.com$",
            "^.*\\.example\\.com$",
            "^tenant-[0-9]{1,6}\\.example\\.com$",
            "^(?<=x)y$",
            "^[]a]+$",
            "^[[:alpha:]]+-[0-9]+\\.x$",
            "^a{2}b$",
        ] {
            assert_eq!(backtracking_risk(p), None, "{p} should pass");
            assert!(compile_like_haproxy(p).is_ok(), "{p} compiles");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for p in [
            "\\", "[", "(", ")", "{", "a{", "a{1,", "a{,}", "é+", "\\x", "\\x{", "[[:", "(?#",
            "\\Q", "a**", "a{2}{3}",
        ] {
            let _ = backtracking_risk(p);
        }
    }
}
