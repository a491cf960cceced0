//! The README's configuration table, generated from the key declarations ([`super::keys`]) and
//! kept in step with README.md by a test (`HNC_BLESS=1` rewrites the README's section).

use super::keys::KEYS;

/// Marks the start of the generated table in README.md.
pub const BEGIN: &str = "<!-- config-keys:begin -->";
/// Marks the end of the generated table in README.md.
pub const END: &str = "<!-- config-keys:end -->";

/// The configuration table in Markdown: one row per key, in registry order, with its JSON key,
/// environment variables, flag (`—` for secrets, which have none), default and meaning.
pub fn table() -> String {
    let mut out = String::from(
        "| JSON key | environment | flag | default | meaning |\n|---|---|---|---|---|\n",
    );
    for spec in KEYS {
        let env = spec
            .env
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let flag = spec
            .flag
            .map_or_else(|| "—".to_string(), |f| format!("`{f}`"));
        out.push_str(&format!(
            "| `{}` | {env} | {flag} | {} | {} |\n",
            spec.json,
            cell(spec.default),
            cell(spec.doc)
        ));
    }
    out
}

/// Text as a table cell: a `|` would end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Where the table lies in `readme`: from the line after the begin marker to the end marker.
fn bounds(readme: &str) -> Option<(usize, usize)> {
    let start = readme.find(BEGIN)? + BEGIN.len();
    let start = start + readme[start..].find('\n')? + 1;
    let end = start + readme[start..].find(END)?;
    Some((start, end))
}

/// The text between the markers of `readme`, if both are there in that order.
pub fn section(readme: &str) -> Option<&str> {
    bounds(readme).map(|(start, end)| &readme[start..end])
}

/// `readme` with the text between its markers replaced by `table`; `None` without the markers.
pub fn with_table(readme: &str, table: &str) -> Option<String> {
    let (start, end) = bounds(readme)?;
    Some(format!("{}{table}{}", &readme[..start], &readme[end..]))
}
