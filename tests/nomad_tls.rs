//! The Nomad client over HTTPS against the Nomad double with real certificates: a private CA,
//! the server name Nomad's certificates carry (`server.global.nomad`), mutual TLS, and the
//! failures a wrong setting must produce.

use std::sync::Arc;
use std::time::Duration;

use crate::support::nomad::{NomadDouble, Options, Reg};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::config::{Config, Layer};
use haproxy_nomad_connector::nomad::{NomadClient, NomadStats};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls;

struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    mutual: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Nomad test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["server.global.nomad".to_string()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let client = CertificateParams::new(vec!["cli.global.nomad".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");

    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.path().join("client.pem"), client.pem()).expect("write");
    std::fs::write(
        dir.path().join("client-key.pem"),
        client_key.serialize_pem(),
    )
    .expect("write");
    // A CA nobody signed anything with.
    let other_key = KeyPair::generate().expect("key");
    let mut other = CertificateParams::new(Vec::<String>::new()).expect("params");
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.path().join("other-ca.pem"),
        other.self_signed(&other_key).expect("cert").pem(),
    )
    .expect("write");

    let chain = vec![server.der().clone()];
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("key der");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let mutual = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("mutual config");
    Pki {
        dir,
        server: Arc::new(server_cfg),
        mutual: Arc::new(mutual),
    }
}

fn config(url: &str, env: &[(&str, String)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![("NOMAD_ADDR".into(), url.to_string())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Config::load(
        None,
        |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        Layer::default(),
    )
    .expect("valid config")
}

async fn list(config: &Config) -> Result<usize, String> {
    let client = NomadClient::new(
        &config.nomad,
        Arc::new(NomadStats::default()),
        CallMetrics::disabled(),
    )
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), client.list_services("*", None))
        .await
        .map_err(|_| "timed out".to_string())?
        .map(|page| {
            page.data
                .iter()
                .map(|ns| ns.services.as_ref().map_or(0, Vec::len))
                .sum()
        })
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn https_with_the_cluster_ca_and_server_name() {
    let pki = pki();
    let double = NomadDouble::start_tls(Options::default(), pki.server.clone()).await;
    double.register([Reg::new("default", "web", "a", "10.0.0.1", 80)]);
    let path = |f: &str| pki.dir.path().join(f).display().to_string();

    // Verified against the CA and the name on the certificate.
    let ok = config(
        double.url(),
        &[
            ("NOMAD_CACERT", path("ca.pem")),
            ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".into()),
        ],
    );
    assert_eq!(list(&ok).await, Ok(1));

    // Without the server name, the certificate does not name 127.0.0.1: refused.
    let e = list(&config(double.url(), &[("NOMAD_CACERT", path("ca.pem"))]))
        .await
        .expect_err("name mismatch");
    println!("{e}");
    assert!(e.contains("certificate not valid for name"), "{e}");

    // A CA that did not sign it: refused.
    let e = list(&config(
        double.url(),
        &[
            ("NOMAD_CACERT", path("other-ca.pem")),
            ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".into()),
        ],
    ))
    .await
    .expect_err("unknown issuer");
    println!("{e}");
    assert!(e.contains("UnknownIssuer"), "{e}");

    // skip_verify accepts it anyway (testing only).
    let skip = config(double.url(), &[("NOMAD_SKIP_VERIFY", "true".into())]);
    assert_eq!(list(&skip).await, Ok(1));

    // Plain HTTP to an HTTPS Nomad fails; it never reads as "no services".
    let plain = config(&double.url().replace("https://", "http://"), &[]);
    assert!(list(&plain).await.is_err());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = pki();
    let double = NomadDouble::start_tls(Options::default(), pki.mutual.clone()).await;
    double.register([Reg::new("default", "web", "a", "10.0.0.1", 80)]);
    let path = |f: &str| pki.dir.path().join(f).display().to_string();
    let base = [
        ("NOMAD_CACERT", path("ca.pem")),
        ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".to_string()),
    ];

    assert!(
        list(&config(double.url(), &base)).await.is_err(),
        "no client certificate: refused"
    );
    let mut with_cert = base.to_vec();
    with_cert.push(("NOMAD_CLIENT_CERT", path("client.pem")));
    with_cert.push(("NOMAD_CLIENT_KEY", path("client-key.pem")));
    assert_eq!(list(&config(double.url(), &with_cert)).await, Ok(1));
}
