//! A SIP message from a UDP datagram or a TCP stream: parsing, the accessors the platform
//! uses, the response built from it, TCP framing and the 513 answer.
#![no_main]
use fieldlink_gb28181::sip::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = "127.0.0.1:5060".parse().unwrap();
    if let Ok(Some(n)) = sip::frame_len(data) {
        assert!(n <= data.len());
    }
    let _ = sip::too_large_answer(data, source);
    if let Ok(m) = Message::parse(data) {
        let _ = (m.method(), m.cseq(), m.expires(), m.from_user());
        for name in [
            "via",
            "to",
            "contact",
            "authorization",
            "content-type",
            "subject",
        ] {
            let _ = m.header(name);
        }
        if m.method().is_some() {
            let r = sip::response(&m, 200, "OK", source, "tag", &[], None);
            // What we answer must parse as a message itself.
            Message::parse(&r).expect("our own response parses");
        }
    }
});
