//! The SDP of GB28181 live video (SPEC §10), without I/O: the platform's INVITE offer and
//! reading where the other side wants media (`c=`, `m=`, `y=`, `a=setup`).

use std::net::IpAddr;

/// How RTP travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMode {
    Udp,
    /// The platform listens; the device connects (`a=setup:passive` in the offer).
    TcpPassive,
    /// The platform connects to the device's port (`a=setup:active` in the offer).
    TcpActive,
}

impl MediaMode {
    pub fn parse(s: &str) -> Option<MediaMode> {
        match s {
            "udp" => Some(MediaMode::Udp),
            "tcp-passive" | "tcp_passive" => Some(MediaMode::TcpPassive),
            "tcp-active" | "tcp_active" => Some(MediaMode::TcpActive),
            _ => None,
        }
    }
}

/// The platform's offer for live video from `channel` to `ip:port`.
pub fn play_offer(platform_id: &str, ip: IpAddr, port: u16, mode: MediaMode, ssrc: &str) -> String {
    let (proto, setup) = match mode {
        MediaMode::Udp => ("RTP/AVP", ""),
        MediaMode::TcpPassive => ("TCP/RTP/AVP", "a=setup:passive\r\na=connection:new\r\n"),
        MediaMode::TcpActive => ("TCP/RTP/AVP", "a=setup:active\r\na=connection:new\r\n"),
    };
    format!(
        "v=0\r\no={platform_id} 0 0 IN IP4 {ip}\r\ns=Play\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=video {port} {proto} 96 98 97\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\n\
         a=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\n{setup}y={ssrc}\r\n"
    )
}

/// A device's answer for `channel`: where it sends from / listens (`a=sendonly`).
pub fn play_answer(channel: &str, ip: IpAddr, port: u16, mode: MediaMode, ssrc: &str) -> String {
    let (proto, setup) = match mode {
        MediaMode::Udp => ("RTP/AVP", ""),
        // The device takes the other role of the one the platform offered.
        MediaMode::TcpPassive => ("TCP/RTP/AVP", "a=setup:active\r\na=connection:new\r\n"),
        MediaMode::TcpActive => ("TCP/RTP/AVP", "a=setup:passive\r\na=connection:new\r\n"),
    };
    format!(
        "v=0\r\no={channel} 0 0 IN IP4 {ip}\r\ns=Play\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=video {port} {proto} 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\n{setup}y={ssrc}\r\n"
    )
}

/// What an SDP says about its video: address, port, mode (from the *offerer's* `a=setup`),
/// and the `y=` SSRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub mode: MediaMode,
    pub ssrc: Option<String>,
}

pub fn media(sdp: &str) -> Option<MediaDesc> {
    let mut ip = None;
    let mut port = None;
    let mut tcp = false;
    let mut setup = None;
    let mut ssrc = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c.trim().parse().ok();
        } else if let Some(m) = line.strip_prefix("m=video ") {
            let mut f = m.split_whitespace();
            port = f.next().and_then(|p| p.parse().ok());
            tcp = f
                .next()
                .is_some_and(|p| p.to_ascii_uppercase().starts_with("TCP"));
        } else if let Some(s) = line.strip_prefix("a=setup:") {
            setup = Some(s.trim().to_ascii_lowercase());
        } else if let Some(y) = line.strip_prefix("y=") {
            ssrc = Some(y.trim().to_string());
        }
    }
    let mode = match (tcp, setup.as_deref()) {
        (false, _) => MediaMode::Udp,
        (true, Some("active")) => MediaMode::TcpActive,
        (true, _) => MediaMode::TcpPassive,
    };
    Some(MediaDesc {
        ip,
        port: port?,
        mode,
        ssrc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_reads_back() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for mode in [MediaMode::Udp, MediaMode::TcpPassive, MediaMode::TcpActive] {
            let o = play_offer("34020000002000000001", ip, 30000, mode, "0200000001");
            assert!(o.contains("s=Play\r\n") && o.contains("a=rtpmap:96 PS/90000"));
            assert_eq!(
                media(&o),
                Some(MediaDesc {
                    ip: Some(ip),
                    port: 30000,
                    mode,
                    ssrc: Some("0200000001".into())
                })
            );
        }
        let a = play_answer(
            "34020000001310000001",
            ip,
            40000,
            MediaMode::Udp,
            "0200000001",
        );
        assert_eq!(media(&a).unwrap().port, 40000);
    }
}
