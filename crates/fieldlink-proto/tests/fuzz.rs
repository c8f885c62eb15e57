//! Property-based fuzzing of everything the server parses from devices: control frames
//! (data channels) and signalling JSON. Nothing may panic; whatever decodes must
//! re-encode to the same bytes.

use fieldlink_proto::{ClientMsg, ControlFrame, DeviceId};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn control_frame_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        if let Ok(f) = ControlFrame::decode(&bytes) {
            prop_assert!(!f.payload.is_empty() && f.payload.len() <= 700);
            prop_assert_eq!(f.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn control_frame_with_valid_header(peer in "[a-z0-9]{1,8}/[a-z0-9]{1,8}", seq in any::<u32>(),
                                       payload in proptest::collection::vec(any::<u8>(), 0..720)) {
        let f = ControlFrame { peer: &peer, seq, payload: &payload };
        match f.encode() {
            Ok(b) => prop_assert_eq!(ControlFrame::decode(&b).unwrap(), f),
            Err(_) => prop_assert!(payload.is_empty() || payload.len() > 700),
        }
    }

    #[test]
    fn signalling_json_parse_is_total(s in "\\PC{0,200}") {
        let _ = serde_json::from_str::<ClientMsg>(&s);
        let _ = s.parse::<DeviceId>();
    }

    #[test]
    fn signalling_json_near_valid(kind in prop_oneof![Just("login"), Just("connect"), Just("request_permission"), Just("set_permission"), Just("offer"), Just("x")],
                                  field in "[a-z_]{1,12}", value in prop_oneof![Just("1".to_string()), Just("\"p/d\"".to_string()), Just("null".to_string()), Just("-1".to_string()), Just("[]".to_string())]) {
        let json = format!(r#"{{"type":"{kind}","{field}":{value},"gwid":"p/f","level":1}}"#);
        let _ = serde_json::from_str::<ClientMsg>(&json);
    }
}

/// The fuzzers' seeds (fuzz/seeds) stay what they claim to be: real messages of each kind.
#[test]
fn fuzz_seeds_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let files = |t: &str| {
        let mut v: Vec<_> = std::fs::read_dir(dir.join(t))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        assert!(!v.is_empty(), "no seeds for {t}");
        v
    };
    for p in files("signal_json") {
        let b = std::fs::read(&p).unwrap();
        let client = serde_json::from_slice::<ClientMsg>(&b);
        let server = serde_json::from_slice::<fieldlink_proto::ServerMsg>(&b);
        assert!(
            client.is_ok() || server.is_ok(),
            "{}: {client:?}",
            p.display()
        );
    }
    for p in files("control_frame") {
        let b = std::fs::read(&p).unwrap();
        assert!(ControlFrame::decode(&b).is_ok(), "{}", p.display());
    }
    for p in files("field_config") {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let problems =
            fieldlink_proto::field_config::check(&v, &fieldlink_proto::field_config::ShapeOnly);
        assert!(problems.is_empty(), "{}: {problems:?}", p.display());
    }
}
