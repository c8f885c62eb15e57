//! G.711 (ITU-T): A-law and µ-law, one byte per 8 kHz sample, as GB28181 cameras send
//! their audio (PS stream types 0x90 and 0x91) and WebRTC carries it (PCMA, PCMU).

/// µ-law's bias and clip level (ITU-T G.711, with 14-bit magnitudes scaled to 16 bits).
const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

pub fn ulaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    let mag = s.unsigned_abs().min(ULAW_CLIP as u32) as i32 + ULAW_BIAS;
    // The segment: the highest set bit of the magnitude above bit 7 (0..=7).
    let top = (mag >> 7) as u32;
    let exponent = if top == 0 {
        0
    } else {
        (31 - top.leading_zeros()).min(7) as i32
    };
    let mantissa = (mag >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

pub fn ulaw_decode(code: u8) -> i16 {
    let c = !code;
    let sign = c & 0x80;
    let exponent = i32::from((c >> 4) & 0x07);
    let mantissa = i32::from(c & 0x0F);
    let mag = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if sign != 0 {
        -mag as i16
    } else {
        mag as i16
    }
}

pub fn alaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3; // 13-bit
    let (sign, mag) = if s >= 0 { (0x80u8, s) } else { (0, -s - 1) };
    let mag = mag.min(0x0FFF);
    let code = if mag < 32 {
        (mag >> 1) as u8
    } else {
        let exponent = (31 - (mag as u32).leading_zeros()) as i32 - 4; // 1..=7
        let mantissa = (mag >> exponent) & 0x0F;
        ((exponent << 4) | mantissa) as u8
    };
    (sign | code) ^ 0x55
}

pub fn alaw_decode(code: u8) -> i16 {
    let c = code ^ 0x55;
    let exponent = i32::from((c >> 4) & 0x07);
    let mantissa = i32::from(c & 0x0F);
    let mag = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if c & 0x80 != 0 {
        mag as i16
    } else {
        -mag as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes() {
        // Silence and full scale, as the G.711 tables give them.
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn round_trips_within_the_step_size() {
        for s in (-32768i32..=32767).step_by(7) {
            let s = s as i16;
            for (name, back) in [
                ("A", alaw_decode(alaw_encode(s))),
                ("µ", ulaw_decode(ulaw_encode(s))),
            ] {
                let err = (i32::from(back) - i32::from(s)).abs();
                // Logarithmic steps of about 1/16 of the magnitude: half a step off at
                // most (µ-law clips above 32124).
                let bound = i32::from(s).abs() / 32 + 16;
                assert!(
                    err <= bound || i32::from(s).abs() > 32000,
                    "{name}-law {s} -> {back}"
                );
            }
        }
    }
}
