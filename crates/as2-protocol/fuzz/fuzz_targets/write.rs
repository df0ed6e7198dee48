//! The streaming `MessageWriter` against the unwrap: the first byte picks the layering
//! (signing, encryption, compression), the second how the document is cut into the
//! pieces handed to `write`, the rest is the document. The message must unwrap (whole
//! and streamed) to the document, with the MIC the writer returned.
#![no_main]

mod common;

use as2_protocol::cms::{ContentCipher, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::outbound::{
    CompressionOrder, Encryption, MessageWriter, OutboundMessage, Signing,
};
use as2_protocol::unwrap::{StreamingUnwrap, UnwrapContext, unwrap_message};
use libfuzzer_sys::fuzz_target;

const SIGNINGS: [Option<(MicAlgorithm, SignatureScheme)>; 3] = [
    None,
    Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
    Some((MicAlgorithm::Sha384, SignatureScheme::RsaPss)),
];

const ENCRYPTIONS: [Option<(ContentCipher, KeyTransport)>; 4] = [
    None,
    Some((ContentCipher::TripleDesCbc, KeyTransport::RsaPkcs1v15)),
    Some((ContentCipher::Aes128Cbc, KeyTransport::RsaPkcs1v15)),
    Some((
        ContentCipher::Aes256Gcm,
        KeyTransport::RsaOaep(MicAlgorithm::Sha256),
    )),
];

const COMPRESSIONS: [Option<CompressionOrder>; 3] = [
    None,
    Some(CompressionOrder::BeforeSigning),
    Some(CompressionOrder::AfterSigning),
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let Some((split, document)) = rest.split_first() else {
        return;
    };
    let selector = usize::from(*selector);
    let identity = common::identity();
    let (from, to, id) = (
        As2Id::new("fuzzer").expect("id"),
        As2Id::new("gateway").expect("id"),
        MessageId::parse("<write@fuzz>").expect("message id"),
    );
    let message = OutboundMessage {
        as2_from: &from,
        as2_to: &to,
        message_id: &id,
        subject: None,
        payload: &[],
        content_type: "application/octet-stream",
        filename: None,
        signing: SIGNINGS[selector % 3].map(|(digest, scheme)| Signing {
            identity,
            digest,
            scheme,
        }),
        encryption: ENCRYPTIONS[selector / 3 % 4].map(|(cipher, key_transport)| Encryption {
            recipient: &identity.certificate,
            cipher,
            key_transport,
        }),
        compression: COMPRESSIONS[selector / 12 % 3],
        mdn: None,
    };
    let (mut writer, headers) = MessageWriter::new(&message).expect("writer");
    let mut body = Vec::new();
    // Piece sizes from 1 to 256 bytes, varying along the document.
    let mut rest = document;
    let mut size = usize::from(*split) + 1;
    while !rest.is_empty() {
        let (piece, after) = rest.split_at(size.min(rest.len()));
        writer.write(piece, &mut body).expect("write");
        rest = after;
        size = (size * 7 + 3) % 256 + 1;
    }
    let mic = writer.finish(&mut body).expect("finish");

    let headers = As2RequestHeaders::parse(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .expect("our headers");
    let identities = std::slice::from_ref(identity);
    let certificates = std::slice::from_ref(&identity.certificate);
    let mut context = UnwrapContext::new(identities, certificates);
    context.limits.max_decompressed_size = 1 << 24;
    let whole = unwrap_message(&headers, &body, &context).expect("unwraps");
    assert_eq!(whole.payload.data, document);
    assert_eq!(whole.mic, mic);
    let mut unwrap = StreamingUnwrap::new(&headers, &context, Vec::new()).expect("unwrap");
    for piece in body.chunks(usize::from(*split) * 61 + 1) {
        unwrap.push(piece).expect("push");
    }
    let (streamed, data) = unwrap.finish().expect("streamed unwrap");
    assert_eq!(data, document);
    assert_eq!(streamed.mic, mic);
});
