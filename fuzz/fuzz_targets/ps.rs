//! The MPEG-PS demuxer, fed in pieces the input chooses (as RTP payloads arrive).
#![no_main]
use fieldlink_media::ps::Demuxer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Demuxer::new();
    let step = 1 + 7 * data.first().copied().unwrap_or(0) as usize;
    for chunk in data.chunks(step) {
        if d.push(chunk).is_err() {
            break;
        }
    }
    let _ = d.flush();
    let _ = d.video_type();
});
