//! The SSRC a platform puts in `y=` of an INVITE (SPEC §10): ten digits; the first is 0
//! for live and 1 for playback, digits 2–6 are digits 4–8 of the platform id, the last four
//! a sequence number.

use crate::GbId;

/// `y=` value for the `seq`-th INVITE (sequence taken modulo 10000).
pub fn ssrc(playback: bool, platform: &GbId, seq: u32) -> String {
    format!(
        "{}{}{:04}",
        u8::from(playback),
        &platform.as_str()[3..8],
        seq % 10_000
    )
}

/// The numeric RTP SSRC of a `y=` value (ten digits always fit in 32 bits).
pub fn ssrc_value(y: &str) -> Option<u32> {
    if y.len() == 10 && y.bytes().all(|b| b.is_ascii_digit()) {
        y.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_as_specified() {
        let p: GbId = "34020000002000000001".parse().unwrap();
        // Digits 4–8 of 34020000002000000001 are 20000.
        assert_eq!(ssrc(false, &p, 1), "0200000001");
        assert_eq!(ssrc(true, &p, 12345), "1200002345");
        assert_eq!(ssrc_value("0200000001"), Some(200_000_001));
        assert_eq!(ssrc_value("1999999999"), Some(1_999_999_999));
        assert_eq!(ssrc_value("12345"), None);
    }
}
