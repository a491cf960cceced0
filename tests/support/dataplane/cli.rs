//! What HAProxy's CLI makes of the command lines DPAPI (client-native) builds for runtime map
//! entries. client-native formats `add map <file> <key> <value>`, `set map <file> <id> <value>`,
//! `del map <file> <id>` and `get map <file> <id>` with the API's strings as they are (no
//! escaping) and sends `set severity-output number;<line>`. HAProxy then (2.6 and 3.0, observed on
//! 2.6.12 and 3.0.11):
//! - splits the line into commands on every `;` not preceded by a backslash;
//! - splits each command into words on spaces and tabs not preceded by a backslash;
//! - drops every backslash and keeps the character after it (`\.` → `.`, `\\` → `\`, `\ ` → ` `);
//! - on 2.6, takes a line ending in `<<` as the start of a payload: the command does not run
//!   until an empty line and nothing is answered, which client-native reads as success.

/// The commands of one CLI line, each as its unescaped words.
pub fn commands(line: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    let mut current: Option<String> = None;
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            current.get_or_insert_with(String::new).push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                current.get_or_insert_with(String::new);
            }
            ' ' | '\t' => {
                if let Some(w) = current.take() {
                    out.last_mut().expect("one command").push(w);
                }
            }
            ';' | '\n' => {
                if let Some(w) = current.take() {
                    out.last_mut().expect("one command").push(w);
                }
                out.push(Vec::new());
            }
            other => current.get_or_insert_with(String::new).push(other),
        }
    }
    if let Some(w) = current.take() {
        out.last_mut().expect("one command").push(w);
    }
    out.retain(|c| !c.is_empty());
    out
}

/// Whether HAProxy 2.6 would wait for a payload instead of running the line.
pub fn starts_payload(line: &str) -> bool {
    line.ends_with("<<")
}

/// The first command of `line` (the one client-native judges the answer by).
pub fn first(line: &str) -> Vec<String> {
    commands(line).into_iter().next().unwrap_or_default()
}

/// What `show map` prints for one entry and client-native reads back (`strings.Fields`):
/// `(key, value)`, or `None` when the line has fewer than three fields.
pub fn show_map_fields(id: &str, key: &str, value: &str) -> Option<(String, String)> {
    let line = format!("{id} {key} {value}");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.len() >= 3).then(|| (f[1].to_string(), f[2].to_string()))
}
