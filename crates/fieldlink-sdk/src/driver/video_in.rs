//! A remote device's received video, per receiver: frame counting and loss handling
//! (whether to ask for a keyframe), the built-in decoder, recording, and the frame event
//! for the application. Called by the driver for each frame its peer reassembled.

use super::Driver;
use crate::Event;
use fieldlink_proto::DeviceId;

impl Driver {
    /// Hands one frame to the application; returns whether to ask for a keyframe.
    pub(super) fn on_frame(
        &mut self,
        index: usize,
        codec: fieldlink_media::VideoCodec,
        data: Vec<u8>,
        rtp_time: u64,
        capture: Option<std::time::SystemTime>,
        contiguous: bool,
    ) -> bool {
        let conn_fd = index as u32;
        let (stream, window, record) = {
            let r = self
                .shared
                .receivers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            r.get(index)
                .map(|r| (r.stream.clone(), r.window, r.record.clone()))
                .unwrap_or((None, None, None))
        };
        if stream.is_none() {
            self.record(index, None, &data, rtp_time);
            return false; // in flight when the application disconnected the receiver
        }
        let keyframe = codec.is_keyframe(&data);
        let (counted, counts) = self.counts.entry(index).or_default();
        if *counted != stream {
            // Counters start again with each stream the receiver is connected to.
            *counted = stream.clone();
            *counts = Default::default();
        }
        let dropped_before = counts.dropped;
        let admit = counts.admit(contiguous, keyframe);
        let dropped = counts.dropped - dropped_before;
        if let Some(m) = self.meter.at(index) {
            m.frames_in += 1;
            m.bytes += data.len() as u64;
            m.dropped += dropped;
            m.frames_out += u64::from(admit.deliver);
            let age = capture.and_then(|c| std::time::SystemTime::now().duration_since(c).ok());
            if let Some(age) = age {
                m.latency_sum_ms += age.as_secs_f64() * 1000.0;
                m.latency_n += 1;
            }
        }
        let mut ask = admit.request_keyframe;
        if !admit.deliver {
            return ask;
        }
        let h264 = codec == fieldlink_media::VideoCodec::H264;
        // Recordings and the built-in decoder are H.264 only; H.265 frames go to the
        // application as they are.
        if h264 {
            self.record(index, record, &data, rtp_time);
        }
        let picture = if self.cfg.decode && h264 {
            match self.decode(index, &data) {
                Ok(p) => p,
                Err(()) => {
                    if let Some((_, c)) = self.counts.get_mut(&index) {
                        ask |= c.decode_failed();
                    }
                    if let Some(m) = self.meter.at(index) {
                        m.dropped += 1;
                    }
                    return ask;
                }
            }
        } else {
            None
        };
        if picture.is_some() {
            if let Some((_, c)) = self.counts.get_mut(&index) {
                c.decoded += 1;
            }
            if let Some(m) = self.meter.at(index) {
                m.decoded += 1;
            }
        }
        self.ev.emit(Event::Frame(crate::VideoFrame {
            conn_fd,
            stream,
            window,
            codec,
            keyframe,
            rtp_time,
            capture,
            received: std::time::SystemTime::now(),
            data,
            picture,
        }));
        ask
    }

    /// Feeds receiver `index`'s recorder; a changed or removed target closes the old one.
    pub(super) fn record(
        &mut self,
        index: usize,
        target: Option<crate::record::Target>,
        data: &[u8],
        rtp_time: u64,
    ) {
        let current = self.recorders.get(&index).map(|r| &r.target);
        if current != target.as_ref() {
            if let Some(mut old) = self.recorders.remove(&index) {
                if let Err(e) = old.finish() {
                    self.ev.emit(Event::Warning {
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            if let Some(t) = target {
                self.recorders
                    .insert(index, crate::record::Recorder::new(t));
            }
        }
        if let Some(r) = self.recorders.get_mut(&index) {
            if let Err(e) = r.push(data, rtp_time) {
                // Recording stops on an I/O error (disk full, no permission), once.
                self.recorders.remove(&index);
                self.ev.emit(Event::Warning {
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }

    /// The audio of field device `gwid` goes into every recording of its streams.
    pub(super) fn record_audio(&mut self, gwid: &DeviceId, packet: &[u8]) {
        let prefix = format!("{gwid}#");
        let mut failed = Vec::new();
        for (i, r) in self.recorders.iter_mut() {
            if r.target.source.starts_with(&prefix) {
                if let Err(e) = r.push_audio(packet) {
                    failed.push((*i, e));
                }
            }
        }
        for (i, e) in failed {
            self.recorders.remove(&i);
            self.ev.emit(Event::Warning {
                code: e.code,
                message: e.message,
            });
        }
    }

    /// Closes every recording (disconnect, shutdown).
    pub(super) fn finish_recordings(&mut self) {
        for (_, mut r) in self.recorders.drain() {
            let _ = r.finish();
        }
    }

    /// Decodes one access unit on receiver `index` (one decoder per receiver). `Ok(None)`:
    /// no picture out of this one (yet); `Err`: the decoder rejected it.
    pub(super) fn decode(
        &mut self,
        index: usize,
        data: &[u8],
    ) -> std::result::Result<Option<crate::Picture>, ()> {
        if self.decoders.len() <= index {
            self.decoders.resize_with(index + 1, || None);
        }
        if self.decoders[index].is_none() {
            self.decoders[index] = openh264::decoder::Decoder::new().ok();
        }
        let Some(decoder) = self.decoders[index].as_mut() else {
            return Ok(None);
        };
        let yuv = decoder.decode(data).map_err(|_| ())?;
        Ok(yuv.map(|y| crate::transcode::picture_of(&y)))
    }
}
