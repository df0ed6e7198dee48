//! The header value parsers.
#![no_main]

use as2_protocol::ReceivedContentMic;
use as2_protocol::headers::{
    As2Id, As2RequestHeaders, As2Version, DispositionNotificationOptions, EdiintFeatures,
    MessageId, MicAlgorithm, ReceiptDeliveryOption,
};
use as2_protocol::mdn::Disposition;
use as2_protocol::mime::ContentType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = As2Id::parse_header(text) {
        let again = As2Id::parse_header(&id.to_header_value()).expect("written ids read back");
        assert_eq!(again, id);
    }
    if let Ok(id) = MessageId::parse(text) {
        let _ = MessageId::parse(&id.with_brackets()).expect("bracketed ids read back");
    }
    let options = DispositionNotificationOptions::parse(text);
    let _ = options.choose_mic_algorithm(false);
    let _ = DispositionNotificationOptions::parse(&options.to_string());
    let _ = MicAlgorithm::parse_lenient(text);
    let _ = As2Version::parse(text);
    let _ = EdiintFeatures::parse(text).to_string();
    let _ = ReceiptDeliveryOption::parse(text);
    let _ = ReceivedContentMic::parse(text);
    if let Ok(disposition) = Disposition::parse(text) {
        let _ = Disposition::parse(&disposition.to_string());
    }
    let _ = ContentType::parse(text);
    let mut fields = text.splitn(3, '\n');
    let (a, b, c) = (
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
    );
    let _ = As2RequestHeaders::parse([
        ("AS2-From", a),
        ("AS2-To", b),
        ("Message-ID", c),
        ("Disposition-Notification-Options", c),
    ]);
});
