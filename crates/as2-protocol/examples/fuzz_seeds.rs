//! Writes seed inputs for the cargo-fuzz targets (crates/as2-protocol/fuzz) into
//! `DIR/{mime,headers,unwrap}`: messages this crate builds in every layering, MDNs and
//! header values. Keys are generated on the spot, so signatures and encryption do not
//! match the fuzzer's own key; the seeds exist to reach the parsers behind each layer.
//!
//! ```text
//! cargo run -p as2-protocol --example fuzz_seeds -- crates/as2-protocol/fuzz/corpus
//! ```

use std::error::Error;
use std::path::Path;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mdn::{self, MdnReport, MdnToSend};
use as2_protocol::outbound::{self, CompressionOrder, Encryption, OutboundMessage, Signing};
use as2_testkit::certificates::TestCertificate;

/// Selector bytes of the unwrap target's Content-Type table.
const ENVELOPED: u8 = 0;
const AUTH_ENVELOPED: u8 = 1;
const COMPRESSED: u8 = 2;
const SIGNED: u8 = 5;
const PLAIN: u8 = 6;
const REPORT: u8 = 7;

fn identity(name: &str) -> Result<Identity, Box<dyn Error>> {
    let material = TestCertificate::new(name).valid_days(0, 30).generate();
    Ok(Identity {
        key: material.key,
        certificate: material.certificate,
    })
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), data)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let out = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    let out = Path::new(&out);
    let ours = identity("seed")?;
    let (from, to, id) = (
        As2Id::new("seed sender")?,
        As2Id::new("gateway")?,
        MessageId::generate("seed")?,
    );
    let payload =
        b"ISA*00*          *00*          *ZZ*SENDER*ZZ*RECEIVER~\r\nGS*PO*S*R~\nST*850*0001~\r\n";
    let signings = [
        None,
        Some(SignatureScheme::RsaPkcs1v15),
        Some(SignatureScheme::RsaPss),
    ];
    let ciphers = [
        None,
        Some(ContentCipher::TripleDesCbc),
        Some(ContentCipher::Aes256Gcm),
    ];
    let compressions = [
        None,
        Some(CompressionOrder::BeforeSigning),
        Some(CompressionOrder::AfterSigning),
    ];
    let mut count = 0;
    for signing in signings {
        for cipher in ciphers {
            for compression in compressions {
                let built = outbound::build_message(&OutboundMessage {
                    as2_from: &from,
                    as2_to: &to,
                    message_id: &id,
                    subject: None,
                    payload,
                    content_type: "application/edi-x12",
                    filename: Some("seed.edi"),
                    signing: signing.map(|scheme| Signing {
                        identity: &ours,
                        digest: MicAlgorithm::Sha256,
                        scheme,
                    }),
                    encryption: cipher.map(|cipher| Encryption {
                        recipient: &ours.certificate,
                        cipher,
                        key_transport: KeyTransport::RsaOaep(MicAlgorithm::Sha256),
                    }),
                    compression,
                    mdn: None,
                })?;
                let content_type = built.header("Content-Type").unwrap_or_default();
                let selector = match (cipher, content_type) {
                    (Some(c), _) if c.is_authenticated() => AUTH_ENVELOPED,
                    (Some(_), _) => ENVELOPED,
                    (None, t) if t.contains("compressed-data") => COMPRESSED,
                    (None, t) if t.starts_with("multipart/signed") => SIGNED,
                    _ => PLAIN,
                };
                let body = if selector == SIGNED {
                    // The target's multipart/signed Content-Type uses boundary "b".
                    let boundary = content_type
                        .rsplit("boundary=\"")
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches('"');
                    String::from_utf8_lossy(&built.body)
                        .replace(boundary, "b")
                        .into_bytes()
                } else {
                    built.body.clone()
                };
                write(
                    &out.join("unwrap"),
                    &format!("message-{count}"),
                    // The second byte picks the chunk sizes of the streaming unwrap.
                    &[&[selector, (count * 37 % 256) as u8], body.as_slice()].concat(),
                )?;
                let entity = [
                    format!("Content-Type: {content_type}\r\n\r\n").as_bytes(),
                    &built.body,
                ]
                .concat();
                write(&out.join("mime"), &format!("message-{count}"), &entity)?;
                count += 1;
            }
        }
    }
    let headers = As2RequestHeaders::parse([
        ("AS2-From", "\"seed sender\""),
        ("AS2-To", "gateway"),
        ("Message-ID", "<1@seed>"),
    ])?;
    let report = MdnReport::for_outcome(
        "seed",
        &headers,
        Err(&as2_protocol::As2Error::DecryptionFailed("seed".into())),
    );
    let mdn = mdn::build_mdn(&MdnToSend {
        as2_from: &to,
        as2_to: &from,
        message_id: &id,
        text: "seed",
        report: &report,
        signing: None,
    })?;
    let boundary = mdn
        .header("Content-Type")
        .unwrap_or_default()
        .rsplit("boundary=\"")
        .next()
        .unwrap_or_default()
        .trim_end_matches('"')
        .to_owned();
    let body = String::from_utf8_lossy(&mdn.body)
        .replace(&boundary, "b")
        .into_bytes();
    write(
        &out.join("unwrap"),
        "mdn",
        &[&[REPORT, 0], body.as_slice()].concat(),
    )?;
    let header_seeds = [
        "\"seed \\\"sender\\\"\"",
        "<1641304626700-55@mecas2>",
        "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256, sha1",
        "signed-receipt-protocol=required,pkcs7-signature;signed-receipt-micalg=required,md5",
        "automatic-action/MDN-sent-automatically; processed/error: decryption-failed",
        "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=, sha-256",
        "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha256;\tboundary=\"----=_Part_1\"",
        "attachment; filename*=UTF-8''a%20b.edi",
        "multiple-attachments, CEM",
        "https://partner.example/as2/mdn",
    ];
    for (index, seed) in header_seeds.iter().enumerate() {
        write(
            &out.join("headers"),
            &format!("seed-{index}"),
            seed.as_bytes(),
        )?;
    }
    println!(
        "wrote {count} messages, 1 MDN and {} header values under {}",
        header_seeds.len(),
        out.display()
    );
    Ok(())
}
