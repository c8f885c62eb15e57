//! Internal rendering (SPEC §2 windows): each decoded picture of a receiver bound to an
//! X11 window is scaled into that window, aspect kept, black bars around.
//!
//! x11rb (pure Rust X11 protocol, no libxcb/Xlib needed at build time) puts the picture
//! with `PutImage` into the program's own window: only that window's pixels change, so the
//! program's other widgets are untouched, and no window or GL context of ours exists.
//! Pictures are drawn on the event thread, in frame order, before the frame callback.

use std::collections::HashMap;

use fieldlink_sdk::{Event, Picture};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, CreateGCAux, ImageFormat};
use x11rb::rust_connection::RustConnection;

use crate::handle::Hook;

/// Bytes of one `PutImage`: pictures are sent in bands of rows below this, so no request
/// is over the server's limit without BIG-REQUESTS.
const BAND_BYTES: usize = 240 * 1024;

/// The hook that draws every picture of a receiver with a window.
pub(crate) fn hook() -> Hook {
    let mut r = Renderer::default();
    Box::new(move |ev| {
        if let Event::Frame(f) = ev {
            if let (Some(w), Some(p)) = (f.window, f.picture.as_ref()) {
                r.draw(w, p);
            }
        }
    })
}

#[derive(Default)]
struct Renderer {
    /// `None` until the first window; `Some(None)` when the display cannot be opened.
    conn: Option<Option<RustConnection>>,
    /// A graphics context per window (made on its first picture).
    gcs: HashMap<u32, u32>,
    /// The window's BGRX pixels, reused.
    buf: Vec<u8>,
}

impl Renderer {
    fn draw(&mut self, window: u64, pic: &Picture) {
        let Ok(window) = u32::try_from(window) else {
            tracing::warn!("window {window:#x} is not an X11 window id");
            return;
        };
        let conn = self.conn.get_or_insert_with(|| match x11rb::connect(None) {
            Ok((c, _)) => Some(c),
            Err(e) => {
                tracing::warn!("internal rendering is off: cannot open the X11 display: {e}");
                None
            }
        });
        let Some(conn) = conn.as_ref() else { return };
        if let Err(e) = put(conn, &mut self.gcs, &mut self.buf, window, pic) {
            // A window the program destroyed: forget its context, skip the picture.
            tracing::debug!("drawing into window {window:#x}: {e}");
            if let Some(gc) = self.gcs.remove(&window) {
                let _ = conn.free_gc(gc);
            }
        }
    }
}

fn put(
    conn: &RustConnection,
    gcs: &mut HashMap<u32, u32>,
    buf: &mut Vec<u8>,
    window: u32,
    pic: &Picture,
) -> Result<(), Box<dyn std::error::Error>> {
    let geom = conn.get_geometry(window)?.reply()?;
    if !matches!(geom.depth, 24 | 32) {
        return Err(format!("depth {} (24 or 32 bit TrueColor only)", geom.depth).into());
    }
    let gc = match gcs.get(&window) {
        Some(gc) => *gc,
        None => {
            let gc = conn.generate_id()?;
            conn.create_gc(gc, window, &CreateGCAux::new())?;
            gcs.insert(window, gc);
            gc
        }
    };
    let (w, h) = (geom.width as usize, geom.height as usize);
    if w == 0 || h == 0 {
        return Ok(());
    }
    scale_into(pic, w, h, buf);
    let rows = (BAND_BYTES / (w * 4)).max(1);
    for y0 in (0..h).step_by(rows) {
        let n = rows.min(h - y0);
        conn.put_image(
            ImageFormat::Z_PIXMAP,
            window,
            gc,
            w as u16,
            n as u16,
            0,
            y0 as i16,
            0,
            geom.depth,
            &buf[y0 * w * 4..(y0 + n) * w * 4],
        )?;
    }
    conn.flush()?;
    Ok(())
}

/// The largest rectangle of the picture's aspect inside `w`×`h`, centred: (x, y, w, h).
fn fit(pw: usize, ph: usize, w: usize, h: usize) -> (usize, usize, usize, usize) {
    if pw == 0 || ph == 0 {
        return (0, 0, 0, 0);
    }
    let (fw, fh) = if w * ph <= h * pw {
        (w, (w * ph / pw).max(1))
    } else {
        ((h * pw / ph).max(1), h)
    };
    ((w - fw) / 2, (h - fh) / 2, fw, fh)
}

/// `pic` scaled (nearest neighbour) into a `w`×`h` BGRX image, black around it.
fn scale_into(pic: &Picture, w: usize, h: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(w * h * 4, 0);
    let (x0, y0, fw, fh) = fit(pic.width, pic.height, w, h);
    let cw = pic.width / 2;
    for dy in 0..fh {
        let sy = dy * pic.height / fh;
        let row = &mut out[((y0 + dy) * w + x0) * 4..((y0 + dy) * w + x0 + fw) * 4];
        for (dx, px) in row.chunks_exact_mut(4).enumerate() {
            let sx = dx * pic.width / fw;
            let y = pic.y[sy * pic.width + sx];
            let c = (sy / 2) * cw + sx / 2;
            let (b, g, r) = yuv_to_bgr(y, pic.u[c], pic.v[c]);
            px[0] = b;
            px[1] = g;
            px[2] = r;
        }
    }
}

/// BT.601 limited range, integer arithmetic.
fn yuv_to_bgr(y: u8, u: u8, v: u8) -> (u8, u8, u8) {
    let c = (y as i32 - 16) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    (
        clip(c + 516 * d),
        clip(c - 100 * d - 208 * e),
        clip(c + 409 * e),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_keeps_its_aspect_centred() {
        assert_eq!(fit(640, 360, 640, 360), (0, 0, 640, 360));
        // Wider window: bars left and right.
        assert_eq!(fit(640, 360, 800, 360), (80, 0, 640, 360));
        // Taller window: bars above and below.
        assert_eq!(fit(640, 360, 320, 400), (0, 110, 320, 180));
        assert_eq!(fit(0, 0, 10, 10), (0, 0, 0, 0));
    }

    #[test]
    fn a_scaled_picture_has_its_colour_and_black_bars() {
        // 4x2 picture, mid grey with a red tint (V high).
        let pic = Picture {
            width: 4,
            height: 2,
            y: vec![126; 8],
            u: vec![128; 2],
            v: vec![200; 2],
        };
        let mut out = Vec::new();
        scale_into(&pic, 8, 8, &mut out);
        let px = |x: usize, y: usize| &out[(y * 8 + x) * 4..(y * 8 + x) * 4 + 3];
        assert_eq!(px(0, 0), [0, 0, 0], "bar above");
        assert_eq!(px(0, 7), [0, 0, 0], "bar below");
        let [b, g, r] = px(4, 4).try_into().unwrap();
        assert!(r > g && r > b, "red tint kept: {r} {g} {b}");
    }

    #[test]
    fn white_and_black_convert_to_full_range() {
        assert_eq!(yuv_to_bgr(235, 128, 128), (255, 255, 255));
        assert_eq!(yuv_to_bgr(16, 128, 128), (0, 0, 0));
    }
}
