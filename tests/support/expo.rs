//! A small, strict parser of the Prometheus text exposition format (version 0.0.4), for tests:
//! it rejects what a Prometheus server would reject, plus a few things it would merely tolerate
//! (samples without a `# TYPE`, a family split in two, histograms whose buckets do not add up).
//!
//! The one parser of the tests: the integration tests read the connector's `/metrics` with it
//! (through `support::connector::Metrics`), and the library's unit tests include this file from
//! `src/metrics.rs` (`#[path]`, under `cfg(test)`), so it must depend on `std` alone.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's own name (`…_bucket`, `…_sum`, `…_count` for a histogram).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub kind: Kind,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The value of the sample named `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

/// Parses `text` into families by name, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            let (keyword, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            match keyword {
                "HELP" | "TYPE" => {
                    let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
                    check_metric_name(name).map_err(at)?;
                    if current.as_deref() != Some(name) {
                        if families.contains_key(name) {
                            return Err(at(format!("family {name} appears twice")));
                        }
                        families.insert(
                            name.to_string(),
                            Family {
                                kind: Kind::Untyped,
                                help: None,
                                samples: Vec::new(),
                            },
                        );
                        current = Some(name.to_string());
                    }
                    let family = families
                        .get_mut(name)
                        .ok_or_else(|| at("internal: no family".into()))?;
                    if keyword == "HELP" {
                        if family.help.is_some() {
                            return Err(at(format!("second HELP for {name}")));
                        }
                        family.help = Some(unescape_help(arg).map_err(at)?);
                    } else {
                        if !family.samples.is_empty() {
                            return Err(at(format!("TYPE for {name} after its samples")));
                        }
                        family.kind = match arg {
                            "counter" => Kind::Counter,
                            "gauge" => Kind::Gauge,
                            "histogram" => Kind::Histogram,
                            "summary" => Kind::Summary,
                            "untyped" => Kind::Untyped,
                            other => return Err(at(format!("unknown type {other:?}"))),
                        };
                    }
                }
                _ => {} // a plain comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family_name = current
            .clone()
            .ok_or_else(|| at("sample before any # TYPE".into()))?;
        let family = families
            .get_mut(&family_name)
            .ok_or_else(|| at("internal: no family".into()))?;
        let suffix = sample.name.strip_prefix(family_name.as_str());
        let fits = match family.kind {
            Kind::Counter | Kind::Gauge | Kind::Untyped => suffix == Some(""),
            Kind::Histogram => match suffix {
                Some("_bucket") => sample.labels.contains_key("le"),
                Some("_sum" | "_count") => !sample.labels.contains_key("le"),
                _ => false,
            },
            Kind::Summary => match suffix {
                Some("") => sample.labels.contains_key("quantile"),
                Some("_sum" | "_count") => true,
                _ => false,
            },
        };
        if !fits {
            return Err(at(format!(
                "sample {} does not belong to {:?} family {family_name}",
                sample.name, family.kind
            )));
        }
        if family
            .samples
            .iter()
            .any(|s| s.name == sample.name && s.labels == sample.labels)
        {
            return Err(at("duplicate series".into()));
        }
        family.samples.push(sample);
    }
    for (name, family) in &families {
        if family.kind == Kind::Histogram {
            check_histogram(name, family)?;
        }
        if family.kind == Kind::Counter
            && family
                .samples
                .iter()
                .any(|s| s.value < 0.0 || s.value.is_nan())
        {
            return Err(format!("counter {name} has a negative or NaN value"));
        }
    }
    Ok(families)
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "no value".to_string())?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // A label name, or the closing brace (also after a trailing comma).
            let start = match chars.peek() {
                Some((_, '}')) => {
                    let (i, _) = chars.next().ok_or("unterminated labels")?;
                    rest = &after[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let mut end = start;
            while let Some((i, c)) = chars.peek() {
                if *c == '=' {
                    break;
                }
                end = *i + c.len_utf8();
                chars.next();
            }
            let label = &after[start..end];
            check_label_name(label)?;
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("label {label} has no `=`"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label}'s value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape in label value: {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} given twice"));
            }
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                other => {
                    return Err(format!(
                        "expected `,` or `}}` after a label, found {other:?}"
                    ));
                }
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| "no space before the value".to_string())?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or_default())?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            && !s.is_empty() =>
        {
            s.parse::<f64>().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in family
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
    {
        let mut labels = s.labels.clone();
        let le = labels.remove("le").unwrap_or_default();
        let le = parse_value(&le).map_err(|e| format!("{name}: le: {e}"))?;
        series.entry(labels).or_default().push((le, s.value));
    }
    if series.is_empty() {
        return Err(format!("histogram {name} has no buckets"));
    }
    for (labels, buckets) in series {
        let mut last = (f64::NEG_INFINITY, 0.0);
        for &(le, count) in &buckets {
            if le <= last.0 || count < last.1 {
                return Err(format!(
                    "histogram {name}{labels:?}: buckets not increasing and cumulative"
                ));
            }
            last = (le, count);
        }
        if last.0 != f64::INFINITY {
            return Err(format!("histogram {name}{labels:?} has no +Inf bucket"));
        }
        let find = |suffix: &str| {
            family
                .samples
                .iter()
                .find(|s| s.name == format!("{name}{suffix}") && s.labels == labels)
                .map(|s| s.value)
        };
        match (find("_count"), find("_sum")) {
            (Some(count), Some(_)) if count == last.1 => {}
            (Some(count), Some(_)) => {
                return Err(format!(
                    "histogram {name}{labels:?}: _count {count} differs from the +Inf bucket {}",
                    last.1
                ));
            }
            _ => return Err(format!("histogram {name}{labels:?} lacks _sum or _count")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_exposition() {
        let text = "# HELP a_total Things, with \\\\ and \\n.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\na_total{x=\"2\",} 4 1700000000000\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n# a comment\n# TYPE g gauge\ng -1e3\n";
        let f = parse(text).expect("valid");
        assert_eq!(f["a_total"].kind, Kind::Counter);
        assert_eq!(
            f["a_total"].help.as_deref(),
            Some("Things, with \\ and \n.")
        );
        assert_eq!(
            f["a_total"].value("a_total", &[("x", "1"), ("y", "q\"\\\n")]),
            Some(3.0)
        );
        assert_eq!(f["a_total"].value("a_total", &[("x", "2")]), Some(4.0));
        assert_eq!(f["h"].value("h_count", &[]), Some(2.0));
        assert_eq!(f["g"].value("g", &[]), Some(-1000.0));
    }

    #[test]
    fn rejects_malformed_text() {
        for (text, why) in [
            ("a 1\n", "sample before any # TYPE"),
            ("# TYPE a counter\na 1", "does not end with a newline"),
            ("# TYPE a counter\nb 1\n", "does not belong"),
            ("# TYPE a gauge\na{x=1} 1\n", "not quoted"),
            ("# TYPE a gauge\na{x=\"1\" 1\n", "expected `,` or `}`"),
            ("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", "given twice"),
            ("# TYPE a gauge\na{x=\"\\t\"} 1\n", "bad escape"),
            ("# TYPE a gauge\na 1\na 2\n", "duplicate series"),
            ("# TYPE a gauge\na one\n", "bad value"),
            ("# TYPE a gauge\na  1\n", "bad value"),
            (
                "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n",
                "appears twice",
            ),
            ("# TYPE a counter\na -1\n", "negative"),
            ("# TYPE a meter\n", "unknown type"),
            ("# TYPE 1a gauge\n", "invalid metric name"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
                "cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n",
                "no +Inf",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 2\n",
                "differs",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "lacks _sum",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
