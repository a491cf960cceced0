//! `haproxy.default_domain`: a host-name template (`{service}.{namespace}.apps.example.com`) that
//! gives every enabled service without `domain` or `path` tags an exact host route, like
//! Traefik's `defaultRule`. The rendered name passes the domain grammar or the service gets a
//! diagnostic (and is served without that route).

use super::grammar;
use super::tags::InstanceTags;
use crate::catalog::ServiceKey;
use crate::model::{MatchKind, Mode};

/// The placeholders a template may hold.
pub const PLACEHOLDERS: [&str; 2] = ["{service}", "{namespace}"];

/// `template` with the service's name and namespace, as an exact domain's map key.
pub fn render(template: &str, key: &ServiceKey) -> Result<String, String> {
    let name = template
        .replace("{service}", &key.name)
        .replace("{namespace}", &key.namespace);
    match grammar::domain(&name, MatchKind::Exact) {
        Ok((MatchKind::Exact, host)) => Ok(host),
        Ok(_) => Err(format!("`{name}` is not an exact host name")),
        Err(reason) => Err(format!("`{name}` {reason}")),
    }
}

/// Whether `template` is one: `{service}` in it (else every service claims one host), only the
/// known placeholders, and it renders to a host name for a plain service (configuration checks).
pub fn check_template(template: &str) -> Result<(), String> {
    if !template.contains("{service}") {
        return Err(format!(
            "`{template}` lacks `{{service}}`: every service would claim the same host"
        ));
    }
    let mut rest = template.to_string();
    for p in PLACEHOLDERS {
        rest = rest.replace(p, "x");
    }
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "`{template}` has an unknown placeholder; known: {}",
            PLACEHOLDERS.join(", ")
        ));
    }
    render(template, &ServiceKey::new("default", "web")).map(|_| ())
}

/// Gives `tags` the default domain when they have no route of their own and the service is not
/// `mode=tcp`. `Err`: the rendered name is not a host name (the tags are left as they are).
pub(super) fn apply(
    tags: &mut InstanceTags,
    key: &ServiceKey,
    template: Option<&str>,
) -> Result<(), String> {
    let Some(template) = template else {
        return Ok(());
    };
    if !tags.domains.is_empty() || !tags.paths.is_empty() || tags.mode == Some(Mode::Tcp) {
        return Ok(());
    }
    let host = render(template, key)?;
    tags.domains.push((MatchKind::Exact, host));
    Ok(())
}
