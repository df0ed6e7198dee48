//! A partnership's HTTPS settings (`outbound.https`, `async_mdn.https`) from the
//! command line: our TLS client certificate's key id, the CA file or pins (read here,
//! sent as PEM and fingerprints) and the egress proxy. The routing service validates
//! the result.

use std::path::Path;

use as2_partner::https::sha256_fingerprint;
use as2_rpc::routing::v1::{AsyncMdnPolicy, OutboundSettings, PartnerHttps, Partnership};
use openssl::x509::X509;

use crate::certificates::{load_certificates, normalize_fingerprint};
use crate::cli::SettingsArgs;
use crate::commands::CtlError;

/// The options of one set of HTTPS settings, as given.
struct HttpsOptions<'a> {
    client_key_id: &'a Option<String>,
    ca_file: &'a Option<String>,
    pins: &'a Option<Vec<String>>,
    egress_proxy: &'a Option<String>,
}

impl HttpsOptions<'_> {
    fn any(&self) -> bool {
        self.client_key_id.is_some()
            || self.ca_file.is_some()
            || self.pins.is_some()
            || self.egress_proxy.is_some()
    }
}

/// Copies the HTTPS options that were given into `partnership`'s outbound and
/// asynchronous MDN settings; returns whether any was. Reads the CA and certificate
/// files named.
pub fn apply_https_settings(
    partnership: &mut Partnership,
    settings: &SettingsArgs,
) -> Result<bool, CtlError> {
    let outbound = HttpsOptions {
        client_key_id: &settings.outbound_tls_client_key_id,
        ca_file: &settings.outbound_tls_ca_file,
        pins: &settings.outbound_tls_pin,
        egress_proxy: &settings.outbound_egress_proxy,
    };
    let async_mdn = HttpsOptions {
        client_key_id: &settings.async_mdn_tls_client_key_id,
        ca_file: &settings.async_mdn_tls_ca_file,
        pins: &settings.async_mdn_tls_pin,
        egress_proxy: &settings.async_mdn_egress_proxy,
    };
    let mut changed = false;
    if outbound.any() {
        let target = partnership
            .outbound
            .get_or_insert_with(OutboundSettings::default);
        edit(&mut target.https, &outbound)?;
        changed = true;
    }
    if async_mdn.any() {
        let target = partnership
            .async_mdn
            .get_or_insert_with(AsyncMdnPolicy::default);
        edit(&mut target.https, &async_mdn)?;
        changed = true;
    }
    Ok(changed)
}

fn edit(https: &mut Option<PartnerHttps>, options: &HttpsOptions<'_>) -> Result<(), CtlError> {
    let https = https.get_or_insert_with(PartnerHttps::default);
    if let Some(key_id) = options.client_key_id {
        https.client_certificate_key_id = key_id.trim().to_owned();
    }
    if let Some(file) = options.ca_file {
        https.trusted_ca_pem = if file.trim().is_empty() {
            String::new()
        } else {
            load_certificates(Path::new(file))?
                .into_iter()
                .map(|certificate| certificate.pem)
                .collect()
        };
    }
    if let Some(pins) = options.pins {
        https.pinned_server_certificate_sha256 = Vec::new();
        for pin in pins
            .iter()
            .map(|pin| pin.trim())
            .filter(|pin| !pin.is_empty())
        {
            https
                .pinned_server_certificate_sha256
                .extend(fingerprints_of(pin)?);
        }
    }
    if let Some(proxy) = options.egress_proxy {
        let (url, bypass) = match proxy.trim() {
            "" | "default" => (String::new(), false),
            "direct" => (String::new(), true),
            url => (url.to_owned(), false),
        };
        https.egress_proxy_url = url;
        https.bypass_egress_proxy = bypass;
    }
    Ok(())
}

/// A pin as given: a fingerprint (64 hex digits, colons and spaces allowed), else a
/// certificate file whose certificates' fingerprints are pinned.
fn fingerprints_of(pin: &str) -> Result<Vec<String>, CtlError> {
    let hex = normalize_fingerprint(pin);
    if hex.len() == 64
        && pin
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == ' ')
    {
        return Ok(vec![hex]);
    }
    load_certificates(Path::new(pin))?
        .iter()
        .map(|certificate| {
            X509::from_pem(certificate.pem.as_bytes())
                .and_then(|parsed| sha256_fingerprint(&parsed))
                .map_err(|error| CtlError::Usage(format!("{}: {error}", certificate.origin)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_fingerprints_or_certificate_files() {
        let key = as2_testkit::certificates::KeyMaterial::generate("pinned partner");
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("partner.crt");
        std::fs::write(&file, &key.cert_pem).unwrap();
        let expected = sha256_fingerprint(&key.certificate).unwrap();
        assert_eq!(
            fingerprints_of(file.to_str().unwrap()).unwrap(),
            vec![expected.clone()]
        );
        let with_colons: String = expected
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(fingerprints_of(&with_colons).unwrap(), [expected]);
        assert!(fingerprints_of("/no/such/file.crt").is_err());
    }

    #[test]
    fn options_edit_only_what_they_name() {
        let mut partnership = Partnership::default();
        let settings = SettingsArgs {
            outbound_tls_client_key_id: Some("our-tls".to_owned()),
            outbound_egress_proxy: Some("direct".to_owned()),
            async_mdn_egress_proxy: Some("http://proxy:3128".to_owned()),
            ..SettingsArgs::default()
        };
        assert!(apply_https_settings(&mut partnership, &settings).unwrap());
        let outbound = partnership.outbound.clone().unwrap().https.unwrap();
        assert_eq!(outbound.client_certificate_key_id, "our-tls");
        assert!(outbound.bypass_egress_proxy);
        let mdn = partnership.async_mdn.clone().unwrap().https.unwrap();
        assert_eq!(mdn.egress_proxy_url, "http://proxy:3128");
        assert_eq!(mdn.client_certificate_key_id, "");

        let back = SettingsArgs {
            outbound_egress_proxy: Some("default".to_owned()),
            ..SettingsArgs::default()
        };
        assert!(apply_https_settings(&mut partnership, &back).unwrap());
        let outbound = partnership.outbound.unwrap().https.unwrap();
        assert!(!outbound.bypass_egress_proxy);
        assert_eq!(outbound.client_certificate_key_id, "our-tls");
        assert!(
            !apply_https_settings(&mut Partnership::default(), &SettingsArgs::default()).unwrap()
        );
    }
}
