//! PTZ commands (GB/T 28181 annex A.3): the 8-byte `PTZCmd` a platform sends in a
//! `DeviceControl` MESSAGE, as 16 hex digits. Pure.

/// One PTZ motion: each axis -1, 0 or 1, and a speed (0–255; zoom uses its top 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ptz {
    /// -1 left, 1 right.
    pub pan: i8,
    /// -1 down, 1 up.
    pub tilt: i8,
    /// -1 zoom out (wide), 1 zoom in (tele).
    pub zoom: i8,
    pub speed: u8,
}

impl Ptz {
    /// The named commands operators use: `stop`, `left`, `right`, `up`, `down`,
    /// `zoom_in`, `zoom_out`, and the diagonals `up_left`, `up_right`, `down_left`,
    /// `down_right`.
    pub fn named(name: &str, speed: u8) -> Option<Ptz> {
        let (pan, tilt, zoom) = match name {
            "stop" => (0, 0, 0),
            "left" => (-1, 0, 0),
            "right" => (1, 0, 0),
            "up" => (0, 1, 0),
            "down" => (0, -1, 0),
            "up_left" => (-1, 1, 0),
            "up_right" => (1, 1, 0),
            "down_left" => (-1, -1, 0),
            "down_right" => (1, -1, 0),
            "zoom_in" => (0, 0, 1),
            "zoom_out" => (0, 0, -1),
            _ => return None,
        };
        Some(Ptz {
            pan,
            tilt,
            zoom,
            speed,
        })
    }

    /// The 8 bytes: A5, version/check nibbles, address, instruction bits, pan speed, tilt
    /// speed, zoom speed (high nibble), checksum (sum of the first seven, mod 256).
    pub fn bytes(&self) -> [u8; 8] {
        let mut ins = 0u8;
        match self.pan {
            1 => ins |= 0x01,
            -1 => ins |= 0x02,
            _ => {}
        }
        match self.tilt {
            -1 => ins |= 0x04,
            1 => ins |= 0x08,
            _ => {}
        }
        match self.zoom {
            1 => ins |= 0x10,
            -1 => ins |= 0x20,
            _ => {}
        }
        let (h, v) = (
            if self.pan != 0 { self.speed } else { 0 },
            if self.tilt != 0 { self.speed } else { 0 },
        );
        let z = if self.zoom != 0 { self.speed & 0xF0 } else { 0 };
        // Byte 2: version 0 in the high nibble; in the low one the check of byte 1's and
        // byte 2's high nibbles, (0xA + 0x5 + 0x0) mod 16 = 0xF.
        const VERSION: u8 = 0;
        let b2 = (VERSION << 4) | ((0xA + 0x5 + VERSION) & 0x0F);
        let mut b = [0xA5, b2, 0x01, ins, h, v, z, 0];
        b[7] = b[..7].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b
    }

    pub fn hex(&self) -> String {
        self.bytes().iter().map(|b| format!("{b:02X}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_codes() {
        // The stop command every GB28181 stack sends.
        assert_eq!(Ptz::named("stop", 0).unwrap().hex(), "A50F0100000000B5");
        let left = Ptz::named("left", 0x80).unwrap().hex();
        assert_eq!(left, "A50F010280000037"); // 0xA5+0x0F+0x01+0x02+0x80 = 0x137
        let up = Ptz::named("up", 0x40).unwrap().bytes();
        assert_eq!((up[3], up[5], up[4]), (0x08, 0x40, 0));
        let zin = Ptz::named("zoom_in", 0xFF).unwrap().bytes();
        assert_eq!((zin[3], zin[6]), (0x10, 0xF0));
        assert!(Ptz::named("spin", 1).is_none());
    }
}
