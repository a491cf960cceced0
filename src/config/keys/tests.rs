use super::*;

#[test]
fn every_key_has_exactly_one_spec() {
    for spec in KEYS {
        assert_eq!(
            KEYS.iter().filter(|s| s.key == spec.key).count(),
            1,
            "{:?}",
            spec.key
        );
        assert_eq!(
            KEYS.iter().filter(|s| s.json == spec.json).count(),
            1,
            "{}",
            spec.json
        );
    }
}

#[test]
fn sections_and_suggestions() {
    assert!(is_section("nomad"));
    assert!(is_section("haproxy"));
    assert!(is_section("log"));
    assert!(is_section("http"));
    assert!(!is_section("nomad.address"));
    assert!(!is_section("noma"));
    assert_eq!(suggest("haproxy.adress"), Some("haproxy.address"));
    assert_eq!(suggest("nomad.tokn"), Some("nomad.token"));
    assert_eq!(suggest("completely.different"), None);
}

#[test]
fn the_documented_default_is_the_default_used() {
    use crate::config::{Config, Layer, Raw, Source};
    let defaults = Config::from_layer(&Layer::default()).expect("the defaults are valid");
    let shown = defaults.to_redacted_json();
    let default_layer = Layer::defaults();
    for spec in KEYS {
        let (section, name) = spec.json.split_once('.').expect("a dotted JSON path");
        match spec.default_value() {
            Some(text) => {
                // Set explicitly to its documented default, the key changes nothing.
                let mut layer = Layer::default();
                layer.set(spec.key, Raw::Text(text.to_string()), Source::Env("TEST"));
                let explicit = Config::from_layer(&layer)
                    .unwrap_or_else(|e| panic!("{}: default `{text}` is invalid: {e}", spec.json));
                assert_eq!(explicit, defaults, "{}", spec.json);
                assert!(default_layer.get(spec.key).is_some(), "{}", spec.json);
            }
            None => {
                // A described default leaves the key unset: nothing shows in check-config.
                assert!(default_layer.get(spec.key).is_none(), "{}", spec.json);
                if let Some(value) = shown[section].get(name) {
                    assert!(
                        value.is_null() || value == &serde_json::json!([]),
                        "{} is documented as {} but defaults to {value}",
                        spec.json,
                        spec.default
                    );
                }
            }
        }
    }
}

#[test]
fn every_flag_has_a_value_name_and_help_and_no_other_key_does() {
    for spec in KEYS {
        assert_eq!(
            spec.flag.is_some(),
            !spec.value_name.is_empty(),
            "{}",
            spec.json
        );
        assert_eq!(
            spec.flag.is_some(),
            !spec.flag_help.is_empty(),
            "{}",
            spec.json
        );
        assert!(!spec.flag_help.ends_with('.'), "{}", spec.json);
    }
}

/// Keys that name a file holding a secret: resolved into the secret key while loading.
const SECRET_FILES: [Key; 2] = [Key::NomadTokenFile, Key::HaproxyPasswordFile];

#[test]
fn every_key_is_validated() {
    use crate::config::{Config, Layer};
    for spec in KEYS {
        let (section, name) = spec.json.split_once('.').expect("a dotted JSON path");
        let text = format!(r#"{{"{section}":{{"{name}":{{"not":"a value"}}}}}}"#);
        let result = Layer::from_json_text(&text, std::path::Path::new("t.json"))
            .and_then(|layer| Config::from_layer(&layer));
        match result {
            Ok(_) => panic!("{}: an object was accepted", spec.json),
            Err(e) => assert!(e.to_string().contains(spec.json), "{}: {e}", spec.json),
        }
    }
}

#[test]
fn check_config_shows_every_key_but_the_secret_files() {
    use crate::config::{Config, Layer};
    let shown = Config::from_layer(&Layer::default())
        .expect("the defaults are valid")
        .to_redacted_json();
    let mut expected = 0;
    for spec in KEYS.iter().filter(|s| !SECRET_FILES.contains(&s.key)) {
        let (section, name) = spec.json.split_once('.').expect("a dotted JSON path");
        assert!(
            shown[section].get(name).is_some(),
            "{} not shown",
            spec.json
        );
        expected += 1;
    }
    let count: usize = shown
        .as_object()
        .expect("an object")
        .values()
        .map(|s| s.as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert_eq!(
        count, expected,
        "check-config shows a key the registry lacks"
    );
}

#[test]
fn secret_file_keys_are_declared_by_their_kind() {
    let pairs: Vec<(Key, Key)> = secret_files().collect();
    assert_eq!(
        pairs,
        [
            (Key::NomadTokenFile, Key::NomadToken),
            (Key::HaproxyPasswordFile, Key::HaproxyPassword),
        ]
    );
    assert_eq!(
        pairs.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
        SECRET_FILES
    );
    for (_, secret) in pairs {
        assert_eq!(secret.spec().kind, Kind::Secret, "{}", secret.json());
        assert!(secret.spec().flag.is_none(), "{}", secret.json());
    }
}
