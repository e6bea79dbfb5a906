//! The webhook's serving certificate: made and rotated by graygate itself (a private CA and a
//! serving certificate in a Secret, the CA written into the webhook configuration's
//! `caBundle`), or read from files another tool keeps up to date (cert-manager).

use base64::Engine;
use jiff::{Timestamp, ToSpan};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Patch;
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a certificate graygate makes is valid.
pub const VALIDITY_DAYS: i64 = 365;
/// Rotate when less than this is left.
pub const ROTATE_BEFORE_DAYS: i64 = 90;
const ANN_NOT_AFTER: &str = "graygate.io/not-after";
const ANN_SANS: &str = "graygate.io/names";

/// A certificate and key in PEM, with the CA that signed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pem {
    /// The CA certificate(s) clients should trust (the caBundle).
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// When the serving certificate expires.
    pub not_after: Timestamp,
}

/// Make a CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String], now: Timestamp) -> anyhow::Result<Pem> {
    let date = |t: Timestamp| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(d.year() as i32, d.month() as u8, d.day() as u8)
    };
    let not_after = now.checked_add((VALIDITY_DAYS * 24).hours())?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "graygate webhook CA");
    ca_params.not_before = date(now.checked_sub(24.hours())?);
    ca_params.not_after = date(not_after.checked_add(24.hours())?);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.not_before = date(now.checked_sub(24.hours())?);
    params.not_after = date(not_after);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(Pem {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after,
    })
}

/// The certificate the webhook serves, swapped in place on rotation.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    /// Serve this certificate and key from now on.
    pub fn load(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = rustls::crypto::ring::default_provider();
        let ck = CertifiedKey::from_der(chain, key, &provider)?;
        if let Ok(mut c) = self.current.write() {
            *c = Some(Arc::new(ck));
        }
        Ok(())
    }

    /// A certificate is loaded.
    pub fn ready(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// graygate makes and rotates it in this Secret and writes the CA into the webhook configuration.
    Managed {
        /// Secret namespace (the operator's).
        namespace: String,
        /// Secret name.
        secret: String,
        /// The MutatingWebhookConfiguration whose caBundle to keep current.
        webhook: String,
        /// Names the certificate is for.
        names: Vec<String>,
    },
    /// `tls.crt` and `tls.key` in this directory, kept current by someone else (cert-manager).
    Files(PathBuf),
}

fn secret_data(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Keep the certificate current until the process ends: check at start, then every `every`.
/// `settled` is told the outcome of every check until the first one works (`Ok`), then never
/// again: a replica waits for that before it serves admission, and a failed rotation later
/// leaves the certificate it has serving. A failed check is tried again after 2 s.
pub async fn keep_current(
    client: Client,
    source: Source,
    store: Arc<CertStore>,
    every: Duration,
    settled: impl Fn(Result<(), String>) + Send + 'static,
) {
    let mut first = true;
    loop {
        let outcome = match &source {
            Source::Files(dir) => load_files(dir, &store),
            Source::Managed { .. } => ensure_managed(&client, &source, &store).await,
        };
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut first) {
                    settled(Ok(()));
                }
                tokio::time::sleep(every).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate not ready; retrying in 2s");
                if first {
                    settled(Err(format!("{e:#}")));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

fn load_files(dir: &std::path::Path, store: &CertStore) -> anyhow::Result<()> {
    let cert = std::fs::read_to_string(dir.join("tls.crt"))?;
    let key = std::fs::read_to_string(dir.join("tls.key"))?;
    store.load(&cert, &key)
}

/// Make sure the Secret holds a certificate valid for long enough, serve it, and trust its CA
/// in the webhook configuration. On rotation the old CA stays in the bundle beside the new one,
/// so API servers that still see the old certificate keep trusting it.
pub async fn ensure_managed(
    client: &Client,
    source: &Source,
    store: &CertStore,
) -> anyhow::Result<()> {
    let Source::Managed {
        namespace,
        secret,
        webhook,
        names,
    } = source
    else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = Timestamp::now();
    let existing = api.get_opt(secret).await?;
    let wanted_names = names.join(",");
    let usable = existing.as_ref().is_some_and(|s| {
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let fresh = ann
            .get(ANN_NOT_AFTER)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|t| t.duration_since(now).as_secs() > ROTATE_BEFORE_DAYS * 86_400);
        fresh
            && ann.get(ANN_SANS) == Some(&wanted_names)
            && secret_data(s, "tls.crt").is_some()
            && secret_data(s, "tls.key").is_some()
    });
    let current = if usable {
        existing.clone().unwrap_or_default()
    } else {
        let pem = generate(names, now)?;
        let old_ca = existing
            .as_ref()
            .and_then(|s| secret_data(s, "ca.crt"))
            .unwrap_or_default();
        let bundle = format!("{}{}", pem.ca, last_ca(&old_ca));
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_string(), ByteString(pem.cert.into_bytes()));
        data.insert("tls.key".to_string(), ByteString(pem.key.into_bytes()));
        data.insert("ca.crt".to_string(), ByteString(bundle.into_bytes()));
        let mut ann = BTreeMap::new();
        ann.insert(ANN_NOT_AFTER.to_string(), pem.not_after.to_string());
        ann.insert(ANN_SANS.to_string(), wanted_names.clone());
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(secret.clone()),
                namespace: Some(namespace.clone()),
                annotations: Some(ann),
                resource_version: existing
                    .as_ref()
                    .and_then(|e| e.metadata.resource_version.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "graygate".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        };
        let pp = crate::api::post_params(crate::api::MANAGER_GUARD);
        let written = match existing {
            None => api.create(&pp, &s).await,
            Some(_) => api.replace(secret, &pp, &s).await,
        };
        match written {
            Ok(s) => {
                tracing::info!(secret = %secret, "webhook certificate issued");
                s
            }
            // Another replica wrote it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => api.get(secret).await?,
            Err(e) => return Err(e.into()),
        }
    };
    let cert = secret_data(&current, "tls.crt").unwrap_or_default();
    let key = secret_data(&current, "tls.key").unwrap_or_default();
    let ca = secret_data(&current, "ca.crt").unwrap_or_default();
    store.load(&cert, &key)?;
    patch_ca_bundle(client, webhook, &ca).await
}

// The newest CA of an old bundle (its first certificate), kept through one rotation.
fn last_ca(bundle: &str) -> String {
    match bundle.find("-----END CERTIFICATE-----") {
        Some(i) => format!("{}\n", &bundle[..i + "-----END CERTIFICATE-----".len()]),
        None => String::new(),
    }
}

async fn patch_ca_bundle(client: &Client, name: &str, ca: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(cfg) = api.get_opt(name).await? else {
        anyhow::bail!(
            "MutatingWebhookConfiguration {name} does not exist (the chart or `graygate install --webhook-url` installs it; --webhook-configuration names it)"
        );
    };
    let encoded = ByteString(ca.as_bytes().to_vec());
    let hooks = cfg.webhooks.unwrap_or_default();
    if hooks
        .iter()
        .all(|h| h.client_config.ca_bundle.as_ref() == Some(&encoded))
    {
        return Ok(());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    let ops: Vec<serde_json::Value> = (0..hooks.len())
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": b64}))
        .collect();
    api.patch(
        name,
        &crate::api::patch_params(crate::api::MANAGER_GUARD),
        &Patch::Json::<()>(serde_json::from_value(serde_json::json!(ops))?),
    )
    .await?;
    tracing::info!(webhook = %name, "webhook caBundle updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_loads_and_names_its_hosts() {
        crate::install_crypto_provider();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pem = generate(&["graygate.ns.svc".into(), "127.0.0.1".into()], now).unwrap();
        assert!(pem.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pem.ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(pem.ca, pem.cert);
        assert_eq!(
            pem.not_after.duration_since(now).as_secs(),
            VALIDITY_DAYS * 86_400
        );
        let store = CertStore::default();
        assert!(!store.ready());
        store.load(&pem.cert, &pem.key).unwrap();
        assert!(store.ready());
        let two = format!("{}{}", pem.ca, pem.ca);
        assert_eq!(last_ca(&two), pem.ca.trim_end().to_string() + "\n");
    }
}
