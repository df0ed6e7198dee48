//! Benchmarks: unwrapping a signed (SHA-256) + AES-256-CBC message at 1 KB and 1 MB,
//! building and signing an MDN, and the bare RSA-2048 operations those paths contain
//! (one private-key decryption and one public-key verification per unwrap, one
//! private-key signature per MDN) as the baseline for the overhead of everything else.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // criterion generates `main`

use std::hint::black_box;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mdn::{self, MdnReport, MdnToSend};
use as2_protocol::outbound::{self, Encryption, OutboundMessage, Signing};
use as2_protocol::unwrap::{UnwrapContext, unwrap_message};
use as2_testkit::certificates::TestCertificate;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{Signer, Verifier};

fn identity(name: &str) -> Identity {
    let material = TestCertificate::new(name).valid_days(0, 30).generate();
    Identity {
        key: material.key,
        certificate: material.certificate,
    }
}

fn bench_unwrap(c: &mut Criterion) {
    let sender = identity("sender");
    let receiver = identity("receiver");
    let (from, to) = (
        As2Id::new("sender").unwrap(),
        As2Id::new("receiver").unwrap(),
    );
    let message_id = MessageId::generate("bench").unwrap();
    let identities = [receiver.clone()];
    let certificates = [sender.certificate.clone()];
    let context = UnwrapContext::new(&identities, &certificates);
    let mut group = c.benchmark_group("unwrap_signed_sha256_aes256cbc");
    for size in [1024usize, 1024 * 1024] {
        let payload: Vec<u8> =
            b"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       ~\r\n"
                .iter()
                .copied()
                .cycle()
                .take(size)
                .collect();
        let built = outbound::build_message(&OutboundMessage {
            as2_from: &from,
            as2_to: &to,
            message_id: &message_id,
            subject: None,
            payload: &payload,
            content_type: "application/edi-x12",
            filename: None,
            signing: Some(Signing {
                identity: &sender,
                digest: MicAlgorithm::Sha256,
                scheme: SignatureScheme::RsaPkcs1v15,
            }),
            encryption: Some(Encryption {
                recipient: &receiver.certificate,
                cipher: ContentCipher::Aes256Cbc,
                key_transport: KeyTransport::RsaPkcs1v15,
            }),
            compression: None,
            mdn: None,
        })
        .unwrap();
        let headers =
            As2RequestHeaders::parse(built.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &built.body, |b, body| {
            b.iter(|| unwrap_message(black_box(&headers), black_box(body), &context).unwrap());
        });
    }
    group.finish();
}

fn bench_mdn(c: &mut Criterion) {
    let receiver = identity("receiver");
    let headers = As2RequestHeaders::parse([
        ("AS2-From", "sender"),
        ("AS2-To", "receiver"),
        ("Message-ID", "<1@bench>"),
    ])
    .unwrap();
    let mdn_id = MessageId::generate("bench").unwrap();
    let error = as2_protocol::As2Error::DecryptionFailed("bench".into());
    let report = MdnReport::for_outcome("bench", &headers, Err(&error));
    c.bench_function("mdn_build_sign_sha256", |b| {
        b.iter(|| {
            mdn::build_mdn(&MdnToSend {
                as2_from: &headers.as2_to,
                as2_to: &headers.as2_from,
                message_id: &mdn_id,
                text: "The message could not be processed.",
                report: black_box(&report),
                signing: Some((&receiver, MicAlgorithm::Sha256)),
            })
            .unwrap()
        });
    });
}

/// The RSA-2048 operations alone, through OpenSSL.
fn bench_rsa_baseline(c: &mut Criterion) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let cek = [7u8; 32];
    let mut encrypter = Encrypter::new(&key).unwrap();
    encrypter.set_rsa_padding(Padding::PKCS1).unwrap();
    let mut wrapped = vec![0u8; encrypter.encrypt_len(&cek).unwrap()];
    let length = encrypter.encrypt(&cek, &mut wrapped).unwrap();
    wrapped.truncate(length);
    let data = [1u8; 200];
    let signature = Signer::new(MessageDigest::sha256(), &key)
        .unwrap()
        .sign_oneshot_to_vec(&data)
        .unwrap();
    c.bench_function("rsa2048_private_decrypt", |b| {
        b.iter(|| {
            let mut decrypter = Decrypter::new(&key).unwrap();
            decrypter.set_rsa_padding(Padding::PKCS1).unwrap();
            let mut out = vec![0u8; decrypter.decrypt_len(&wrapped).unwrap()];
            decrypter.decrypt(black_box(&wrapped), &mut out).unwrap()
        });
    });
    c.bench_function("rsa2048_private_sign_sha256", |b| {
        b.iter(|| {
            Signer::new(MessageDigest::sha256(), &key)
                .unwrap()
                .sign_oneshot_to_vec(black_box(&data))
                .unwrap()
        });
    });
    c.bench_function("rsa2048_public_verify_sha256", |b| {
        b.iter(|| {
            Verifier::new(MessageDigest::sha256(), &key)
                .unwrap()
                .verify_oneshot(black_box(&signature), &data)
                .unwrap()
        });
    });
}

criterion_group!(benches, bench_unwrap, bench_mdn, bench_rsa_baseline);
criterion_main!(benches);
