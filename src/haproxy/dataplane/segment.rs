//! URL path segments built from arbitrary keys (map keys, names), with the round trip proven.
//!
//! A key becomes one segment: every byte outside RFC 3986's unreserved set is percent-encoded,
//! the segment is put into a URL, the URL is parsed back with [`url::Url`], and its last segment,
//! percent-decoded, must equal the key. Keys no URL can carry are refused with a typed error
//! instead of a request: `.` and `..` are dot segments that URL normalisation removes (a DELETE
//! of the key `..` would hit the collection), and an empty key names the collection itself.
//! Keys the Data Plane API's path-parameter pattern refuses (`^[^\r\n<>*;$#&{}"]+$`, on `{name}`,
//! `{parent_name}` and `{id}`) are refused too, so the API never answers them with a 422 that would
//! fail the whole pass.

use url::Url;

/// Why a key cannot be one URL path segment of a Data Plane API request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("an empty key cannot be a URL path segment (it would name the collection)")]
    Empty,
    #[error("the key {0:?} is a dot segment, which URL normalisation removes")]
    Dot(String),
    #[error(
        "the key {key:?} contains {found:?}, which the Data Plane API refuses in a path parameter"
    )]
    Refused { key: String, found: char },
    #[error("the key {key:?} does not survive a URL round trip (it comes back as {got:?})")]
    RoundTrip { key: String, got: Option<String> },
}

/// Characters the Data Plane API's path-parameter pattern excludes.
const API_REFUSED: &[char] = &['\r', '\n', '<', '>', '*', ';', '$', '#', '&', '{', '}', '"'];

/// RFC 3986 unreserved characters: the only bytes left as they are.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding of one segment; `None` for a malformed escape or bytes that are not UTF-8.
pub fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The percent-encoded path segment for `key`, proven to come back as `key` from a parsed URL.
pub fn url_segment(key: &str) -> Result<String, SegmentError> {
    if key.is_empty() {
        return Err(SegmentError::Empty);
    }
    if key == "." || key == ".." {
        return Err(SegmentError::Dot(key.to_string()));
    }
    if let Some(found) = key.chars().find(|c| API_REFUSED.contains(c)) {
        return Err(SegmentError::Refused {
            key: key.to_string(),
            found,
        });
    }
    let segment = encode(key);
    let got = Url::parse(&format!("http://h/p/{segment}"))
        .ok()
        .and_then(|u| {
            let last = u.path_segments()?.next_back()?.to_string();
            decode(&last)
        });
    if got.as_deref() == Some(key) {
        Ok(segment)
    } else {
        Err(SegmentError::RoundTrip {
            key: key.to_string(),
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: &str) -> String {
        let segment = url_segment(key).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        let url = Url::parse(&format!("http://h/v3/maps/m/entries/{segment}")).expect("url");
        let segments: Vec<&str> = url.path_segments().expect("segments").collect();
        assert_eq!(segments.len(), 5, "{key:?} → {url}");
        assert_eq!(decode(segments[4]).as_deref(), Some(key), "{url}");
        segment
    }

    #[test]
    fn dot_segments_and_the_empty_key_are_refused() {
        assert_eq!(url_segment(""), Err(SegmentError::Empty));
        assert_eq!(url_segment("."), Err(SegmentError::Dot(".".into())));
        assert_eq!(url_segment(".."), Err(SegmentError::Dot("..".into())));
        assert!(
            url_segment("..")
                .expect_err("dot")
                .to_string()
                .contains("dot segment")
        );
    }

    #[test]
    fn keys_round_trip_percent_encoded() {
        assert_eq!(round_trip("api.example.com"), "api.example.com");
        assert_eq!(round_trip("..."), "...");
        assert_eq!(round_trip(".x"), ".x");
        // A literal `%2e` must not be read as an encoded dot.
        assert_eq!(round_trip("%2e"), "%252e");
        assert_eq!(round_trip("%2e%2e"), "%252e%252e");
        assert_eq!(round_trip("%"), "%25");
        assert_eq!(round_trip("a/b"), "a%2Fb");
        assert_eq!(round_trip("/"), "%2F");
        assert_eq!(round_trip("?"), "%3F");
        assert_eq!(round_trip("a?b=c"), "a%3Fb%3Dc");
        assert_eq!(round_trip(r"^api\\.ex\\.com"), "%5Eapi%5C%5C.ex%5C%5C.com");
        assert_eq!(round_trip("a b+c"), "a%20b%2Bc");
        assert_eq!(round_trip("h\u{e9}.example"), "h%C3%A9.example");
        assert_eq!(round_trip("\u{1f600}"), "%F0%9F%98%80");
        assert_eq!(round_trip("~_-"), "~_-");
    }

    #[test]
    fn characters_the_api_pattern_refuses_are_typed_errors() {
        for (key, found) in [
            ("a#b", '#'),
            ("#", '#'),
            ("^api$", '$'),
            ("a*", '*'),
            ("a;b", ';'),
            ("a{2}", '{'),
            ("a&b", '&'),
            ("a\"b", '"'),
            ("a<b>", '<'),
            ("a\nb", '\n'),
        ] {
            assert_eq!(
                url_segment(key),
                Err(SegmentError::Refused {
                    key: key.into(),
                    found
                }),
                "{key:?}"
            );
        }
    }

    #[test]
    fn decoding_rejects_malformed_escapes() {
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%2"), None);
        assert_eq!(decode("%FF"), None);
        assert_eq!(decode("%2e").as_deref(), Some("."));
    }
}
