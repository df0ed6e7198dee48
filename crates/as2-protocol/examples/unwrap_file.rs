//! Unwraps a captured AS2 request (HTTP headers, blank line, body) and prints what the
//! gateway would learn from it: payload facts, security facts and the MIC.
//!
//! ```text
//! cargo run -p as2-protocol --example unwrap_file -- CAPTURE \
//!     [--key KEY.pem --cert CERT.pem [--pass PASSWORD]] [--partner-cert CERT.pem]... \
//!     [--no-validity-check] [--allow-md5] [--mdn]
//! ```
//!
//! With `--mdn` the capture is read as an MDN and its report and signature are printed.

use std::error::Error;

use as2_protocol::cms::Identity;
use as2_protocol::headers::As2RequestHeaders;
use as2_protocol::mdn::{MdnVerification, parse_mdn};
use as2_protocol::mime::{Entity, MimeLimits};
use as2_protocol::unwrap::{UnwrapContext, unwrap_message};
use openssl::x509::X509;

#[derive(Default)]
struct Arguments {
    capture: String,
    key: Option<String>,
    cert: Option<String>,
    pass: Option<String>,
    partner_certs: Vec<String>,
    check_validity: bool,
    allow_md5: bool,
    mdn: bool,
}

fn parse_arguments() -> Result<Arguments, Box<dyn Error>> {
    let mut arguments = Arguments {
        check_validity: true,
        ..Arguments::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--key" => arguments.key = Some(value()?),
            "--cert" => arguments.cert = Some(value()?),
            "--pass" => arguments.pass = Some(value()?),
            "--partner-cert" => arguments.partner_certs.push(value()?),
            "--no-validity-check" => arguments.check_validity = false,
            "--allow-md5" => arguments.allow_md5 = true,
            "--mdn" => arguments.mdn = true,
            _ if arguments.capture.is_empty() => arguments.capture = arg,
            _ => return Err(format!("unexpected argument {arg}").into()),
        }
    }
    if arguments.capture.is_empty() {
        return Err("usage: unwrap_file CAPTURE [--key K --cert C [--pass P]] [--partner-cert C]... [--no-validity-check] [--allow-md5]".into());
    }
    Ok(arguments)
}

fn load_certificates(arguments: &Arguments) -> Result<Vec<X509>, Box<dyn Error>> {
    let mut certificates = Vec::new();
    for path in &arguments.partner_certs {
        certificates.push(X509::from_pem(&std::fs::read(path)?)?);
    }
    Ok(certificates)
}

fn print_mdn(arguments: &Arguments, capture: &Entity<'_>) -> Result<(), Box<dyn Error>> {
    let certificates = load_certificates(arguments)?;
    let verification = MdnVerification {
        partner_certificates: &certificates,
        allow_md5: arguments.allow_md5,
        check_certificate_validity: arguments.check_validity,
        require_signature: false,
    };
    let content_type = capture
        .header("Content-Type")
        .ok_or("the capture has no Content-Type")?;
    match parse_mdn(content_type, capture.body(), &verification) {
        Ok(mdn) => {
            println!("original-message-id: {}", mdn.report.original_message_id);
            println!("disposition:         {}", mdn.report.disposition);
            let mic = mdn
                .report
                .received_content_mic
                .as_ref()
                .map(ToString::to_string);
            println!("received-mic:        {}", mic.as_deref().unwrap_or("-"));
            println!("signature:           {:?}", mdn.signature);
        }
        Err(error) => println!("error:               {error}"),
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let arguments = parse_arguments()?;
    let capture = std::fs::read(&arguments.capture)?;
    let request = Entity::parse(&capture, &MimeLimits::default())?;
    if arguments.mdn {
        return print_mdn(&arguments, &request);
    }
    let headers = As2RequestHeaders::parse(
        request
            .headers()
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str())),
    )?;

    let mut identities = Vec::new();
    if let (Some(key), Some(cert)) = (&arguments.key, &arguments.cert) {
        let passphrase = arguments.pass.as_deref().map(str::as_bytes);
        identities.push(Identity::from_pem(
            &std::fs::read(key)?,
            &std::fs::read(cert)?,
            passphrase,
        )?);
    }
    let certificates = load_certificates(&arguments)?;
    let mut context = UnwrapContext::new(&identities, &certificates);
    context.check_certificate_validity = arguments.check_validity;
    context.allow_md5 = arguments.allow_md5;

    println!("as2-from:     {}", headers.as2_from);
    println!("as2-to:       {}", headers.as2_to);
    println!("message-id:   {}", headers.message_id);
    match unwrap_message(&headers, request.body(), &context) {
        Ok(message) => {
            println!("content-type: {}", message.payload.content_type);
            println!(
                "filename:     {}",
                message.payload.filename.as_deref().unwrap_or("-")
            );
            println!("payload size: {}", message.payload.data.len());
            println!("signature:    {:?}", message.facts.signature);
            println!("encryption:   {:?}", message.facts.encryption);
            println!("compression:  {:?}", message.facts.compression);
            println!("mic:          {}", message.mic);
        }
        Err(error) => {
            println!("error:        {error}");
            println!("disposition:  {}", error.disposition_status());
        }
    }
    Ok(())
}
