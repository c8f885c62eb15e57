//! Mixing: the 10 ms frames of every party heard, summed with saturation into one.

use super::FRAME;

/// Sums `frames` (each `FRAME * channels` samples) into one frame; silence when none.
pub fn mix(frames: &[Vec<i16>], channels: u16) -> Vec<i16> {
    let n = FRAME * usize::from(channels);
    let mut acc = vec![0i32; n];
    for f in frames {
        for (a, s) in acc.iter_mut().zip(f) {
            *a += i32::from(*s);
        }
    }
    acc.into_iter()
        .map(|a| a.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_add_up_and_clip_instead_of_wrapping() {
        let a = vec![1000i16; FRAME];
        let b = vec![-300i16; FRAME];
        assert!(mix(&[a.clone(), b], 1).iter().all(|&s| s == 700));
        let loud = vec![30000i16; FRAME];
        assert!(mix(&[loud.clone(), loud], 1).iter().all(|&s| s == i16::MAX));
        assert_eq!(mix(&[], 2), vec![0; 2 * FRAME]);
    }
}
