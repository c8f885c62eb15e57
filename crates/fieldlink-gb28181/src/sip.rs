//! SIP messages for the platform, without I/O: parsing (rsipstack's parser, behind this
//! small interface), finding message boundaries on a TCP stream (Content-Length), and
//! building responses that go back where the request came from (RFC 3581 `received` and
//! `rport` on the top Via).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Largest SIP message accepted (a Catalog answer with many items fits; UDP cannot carry
/// more than this anyway).
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SipError {
    #[error("malformed SIP message: {0}")]
    Malformed(String),
    #[error("SIP message over {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("the body is shorter than Content-Length ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
}

/// Request line or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// One parsed SIP message: the start line, headers in order (names as sent), and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Compact header forms (RFC 3261 §7.3.3) and their full names.
const COMPACT: [(&str, &str); 8] = [
    ("v", "via"),
    ("f", "from"),
    ("t", "to"),
    ("i", "call-id"),
    ("m", "contact"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("s", "subject"),
];

fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    COMPACT
        .iter()
        .find(|(c, _)| *c == lower)
        .map_or(lower, |(_, full)| (*full).to_string())
}

/// Byte offset just past the blank line that ends the header section.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The Content-Length a header section declares (0 when absent).
fn declared_length(head: &str) -> Result<usize, SipError> {
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if canonical(name) == "content-length" {
                return value.trim().parse().map_err(|_| {
                    SipError::Malformed(format!("Content-Length {:?}", value.trim()))
                });
            }
        }
    }
    Ok(0)
}

/// TCP: the length of the first complete message in `buf`, `None` while more bytes are
/// needed. Leading CRLFs (keepalive pings, RFC 5626) count as part of the message.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, SipError> {
    let Some(end) = header_end(buf) else {
        return if buf.len() > MAX_MESSAGE {
            Err(SipError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let total = end + declared_length(&head)?;
    if total > MAX_MESSAGE {
        return Err(SipError::TooLarge);
    }
    Ok((buf.len() >= total).then_some(total))
}

/// The answer to a request over [`MAX_MESSAGE`] on TCP: `513 Message Too Large` naming the
/// limit (RFC 3261 §21.5.11), built from its header section alone, since the body is never
/// read. `None` when even the headers are over the limit or it is not a request.
pub fn too_large_answer(buf: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let buf = &buf[start..];
    let end = header_end(buf).filter(|&e| e <= MAX_MESSAGE)?;
    let head = String::from_utf8_lossy(&buf[..end - 4]);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, uri) = (first.next()?, first.next()?);
    if method.is_empty() || method.starts_with("SIP/") {
        return None;
    }
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let req = Message {
        start: StartLine::Request {
            method: method.to_string(),
            uri: uri.to_string(),
        },
        headers,
        body: Vec::new(),
    };
    let warning = format!("399 fieldlink \"a SIP message is at most {MAX_MESSAGE} bytes\"");
    Some(response(
        &req,
        513,
        "Message Too Large",
        source,
        &new_tag(),
        &[("Warning", warning)],
        None,
    ))
}

impl Message {
    /// Parses one whole message (a UDP datagram, or a TCP frame from [`frame_len`]).
    pub fn parse(bytes: &[u8]) -> Result<Message, SipError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(SipError::TooLarge);
        }
        let start = bytes
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(bytes.len());
        let bytes = &bytes[start..];
        let end = header_end(bytes)
            .ok_or_else(|| SipError::Malformed("no blank line after the headers".into()))?;
        let head = String::from_utf8_lossy(&bytes[..end]);
        let want = declared_length(&head)?;
        let got = bytes.len() - end;
        if got < want {
            return Err(SipError::Truncated { got, want });
        }
        let parsed = rsipstack::sip::parser::parse_message(bytes)
            .map_err(|e| SipError::Malformed(e.to_string()))?;
        let (start, headers, body) = match parsed {
            rsipstack::sip::SipMessage::Request(r) => (
                StartLine::Request {
                    method: r.method.to_string(),
                    uri: r.uri.to_string(),
                },
                r.headers,
                r.body,
            ),
            rsipstack::sip::SipMessage::Response(r) => (
                StartLine::Response {
                    code: u16::from(r.status_code.clone()),
                    reason: r.wire_reason.clone().unwrap_or_else(|| {
                        // The standard phrase, without the code its Display starts with.
                        let s = r.status_code.to_string();
                        s.split_once(' ').map_or(s.clone(), |(_, p)| p.to_string())
                    }),
                },
                r.headers,
                r.body,
            ),
        };
        let headers = headers
            .iter()
            .filter_map(|h| {
                let line = h.to_string();
                let (n, v) = line.split_once(':')?;
                Some((n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Ok(Message {
            start,
            headers,
            body,
        })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The first header of that name (case-insensitive; compact forms match too).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every header of that name, in order.
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let want = canonical(name);
        self.headers
            .iter()
            .filter(move |(n, _)| canonical(n) == want)
            .map(|(_, v)| v.as_str())
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (n, m) = self.header("cseq")?.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    /// The `Expires` header, in seconds.
    pub fn expires(&self) -> Option<u32> {
        self.header("expires")?.trim().parse().ok()
    }

    /// The user part of the From URI (a GB28181 device id).
    pub fn from_user(&self) -> Option<&str> {
        uri_user(self.header("from")?)
    }
}

/// `sip:USER@host` inside a From/To/Contact value.
pub fn uri_user(value: &str) -> Option<&str> {
    let at = value.find("sip:")? + 4;
    let rest = &value[at..];
    let end = rest.find('@')?;
    Some(&rest[..end])
}

/// The top Via with what RFC 3581 asks a server to add: `received` with the source IP and
/// `rport` with the source port (filled only when the client asked with a bare `rport`,
/// `received` always, as GB28181 devices behind NAT rely on).
fn stamp_via(via: &str, source: SocketAddr) -> String {
    let mut params: Vec<String> = via.split(';').map(|p| p.trim().to_string()).collect();
    params.retain(|p| !p.to_ascii_lowercase().starts_with("received="));
    for p in params.iter_mut().skip(1) {
        if p.eq_ignore_ascii_case("rport") {
            *p = format!("rport={}", source.port());
        }
    }
    params.push(format!("received={}", source.ip()));
    params.join(";")
}

/// A response to `req`: Via (top one stamped for `source`), From, To (with `to_tag` added
/// when it has none), Call-ID and CSeq copied; then `extra` headers and the body.
pub fn response(
    req: &Message,
    code: u16,
    reason: &str,
    source: SocketAddr,
    to_tag: &str,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (i, via) in req.all("via").enumerate() {
        let via = if i == 0 {
            stamp_via(via, source)
        } else {
            via.to_string()
        };
        let _ = write!(out, "Via: {via}\r\n");
    }
    if let Some(f) = req.header("from") {
        let _ = write!(out, "From: {f}\r\n");
    }
    if let Some(t) = req.header("to") {
        if t.to_ascii_lowercase().contains(";tag=") {
            let _ = write!(out, "To: {t}\r\n");
        } else {
            let _ = write!(out, "To: {t};tag={to_tag}\r\n");
        }
    }
    for name in ["call-id", "cseq"] {
        if let Some(v) = req.header(name) {
            let label = if name == "cseq" { "CSeq" } else { "Call-ID" };
            let _ = write!(out, "{label}: {v}\r\n");
        }
    }
    out.push_str("User-Agent: fieldlink\r\n");
    finish(out, extra, body)
}

/// What a request needs besides its method and body.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Request URI and To URI, e.g. `sip:34020000001320000001@3402000000`.
    pub remote_uri: String,
    /// From URI.
    pub local_uri: String,
    pub local_tag: String,
    /// The To tag once the dialog is established (INVITE 200, then ACK/BYE).
    pub remote_tag: Option<String>,
    pub call_id: String,
    /// The sender's address for the Via (`rport` asks for the answer to come back to the
    /// source port).
    pub via: SocketAddr,
    /// `UDP` or `TCP`.
    pub transport: &'static str,
}

/// A fresh Via branch (RFC 3261 magic cookie + random).
pub fn branch() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

/// A fresh From/To tag.
pub fn new_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A fresh Call-ID at `host`.
pub fn new_call_id(host: std::net::IpAddr) -> String {
    format!("{:016x}@{host}", rand::random::<u64>())
}

/// Builds a request in `dialog`. ACK for a 2xx needs the INVITE's CSeq number; every other
/// request takes its own.
pub fn request(
    method: &str,
    dialog: &Dialog,
    cseq: u32,
    branch: &str,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let d = dialog;
    let mut out = format!("{method} {} SIP/2.0\r\n", d.remote_uri);
    let _ = write!(
        out,
        "Via: SIP/2.0/{} {};rport;branch={branch}\r\nFrom: <{}>;tag={}\r\n",
        d.transport, d.via, d.local_uri, d.local_tag
    );
    match &d.remote_tag {
        Some(t) => {
            let _ = write!(out, "To: <{}>;tag={t}\r\n", d.remote_uri);
        }
        None => {
            let _ = write!(out, "To: <{}>\r\n", d.remote_uri);
        }
    }
    let _ = write!(
        out,
        "Call-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nUser-Agent: fieldlink\r\n",
        d.call_id
    );
    finish(out, extra, body)
}

/// Ends a message after its fixed headers: the `extra` headers, then Content-Type and
/// Content-Length, the blank line and the body.
fn finish(mut out: String, extra: &[(&str, String)], body: Option<(&str, &[u8])>) -> Vec<u8> {
    for (n, v) in extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    match body {
        Some((ctype, b)) => {
            let _ = write!(
                out,
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            let mut v = out.into_bytes();
            v.extend_from_slice(b);
            v
        }
        None => {
            out.push_str("Content-Length: 0\r\n\r\n");
            out.into_bytes()
        }
    }
}

/// The `tag` parameter of a From/To value.
pub fn tag(value: &str) -> Option<&str> {
    let at = value.to_ascii_lowercase().find(";tag=")? + 5;
    value[at..]
        .split([';', '>', ' '])
        .next()
        .filter(|t| !t.is_empty())
}

/// A value of a `Digest` challenge (`realm`, `nonce`, ...), quoted or not.
pub fn challenge_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let lower = header.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        let before_ok = at == 0 || matches!(lower.as_bytes()[at - 1], b' ' | b',' | b'\t');
        let rest = header[at + name.len()..].trim_start();
        if before_ok {
            if let Some(v) = rest.strip_prefix('=') {
                let v = v.trim_start();
                return Some(match v.strip_prefix('"') {
                    Some(q) => q.split('"').next().unwrap_or(""),
                    None => v.split(',').next().unwrap_or("").trim(),
                });
            }
        }
        from = at + name.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Untrusted input: any bytes parse or fail cleanly, and framing never panics.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Message::parse(&b);
            let _ = frame_len(&b);
        }

        #[test]
        fn near_sip_never_panics(
            method in "(REGISTER|MESSAGE|INVITE|BYE|[A-Z]{0,8})",
            hdrs in proptest::collection::vec(("[A-Za-z-]{0,12}", "[ -~]{0,40}"), 0..12),
            body in "[ -~]{0,64}",
            len in 0usize..100,
        ) {
            let mut s = format!("{method} sip:a@b SIP/2.0\r\n");
            for (n, v) in hdrs {
                s.push_str(&format!("{n}: {v}\r\n"));
            }
            s.push_str(&format!("Content-Length: {len}\r\n\r\n{body}"));
            if let Ok(m) = Message::parse(s.as_bytes()) {
                let _ = (m.cseq(), m.expires(), m.from_user());
                let src: SocketAddr = "127.0.0.1:5060".parse().unwrap();
                let r = response(&m, 200, "OK", src, "t", &[], None);
                prop_assert!(Message::parse(&r).is_ok());
            }
        }
    }

    const REGISTER: &str = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1\r\n\
        From: <sip:34020000001320000001@3402000000>;tag=abc\r\n\
        To: <sip:34020000001320000001@3402000000>\r\n\
        Call-ID: 42@192.168.1.64\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:34020000001320000001@192.168.1.64:5060>\r\n\
        Max-Forwards: 70\r\n\
        Expires: 3600\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn built_requests_parse_and_carry_the_dialog() {
        let d = Dialog {
            remote_uri: "sip:34020000001320000001@3402000000".into(),
            local_uri: "sip:34020000002000000001@3402000000".into(),
            local_tag: "a1".into(),
            remote_tag: Some("b2".into()),
            call_id: "c3".into(),
            via: "127.0.0.1:5060".parse().unwrap(),
            transport: "UDP",
        };
        let r = request("BYE", &d, 4, &branch(), &[], Some(("text/plain", b"x")));
        let m = Message::parse(&r).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(m.cseq(), Some((4, "BYE")));
        assert_eq!(tag(m.header("to").unwrap()), Some("b2"));
        assert_eq!(tag(m.header("from").unwrap()), Some("a1"));
        assert_eq!(m.body, b"x");
        let h = r#"Digest realm="3402000000",nonce="abc", algorithm=MD5"#;
        assert_eq!(challenge_param(h, "nonce"), Some("abc"));
        assert_eq!(challenge_param(h, "realm"), Some("3402000000"));
        assert_eq!(challenge_param(h, "algorithm"), Some("MD5"));
    }

    #[test]
    fn parses_a_register() {
        let m = Message::parse(REGISTER.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.cseq(), Some((1, "REGISTER")));
        assert_eq!(m.expires(), Some(3600));
        assert_eq!(m.from_user(), Some("34020000001320000001"));
        assert_eq!(m.header("CALL-ID"), Some("42@192.168.1.64"));
    }

    #[test]
    fn compact_header_names_match() {
        let m = Message::parse(
            b"MESSAGE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nf: <sip:1@d>;tag=1\r\n\
              t: <sip:2@d>\r\ni: x\r\nCSeq: 2 MESSAGE\r\nl: 3\r\n\r\nabc",
        )
        .unwrap();
        assert_eq!(m.header("Call-ID"), Some("x"));
        assert_eq!(m.body, b"abc");
    }

    #[test]
    fn a_short_body_is_an_error_not_a_truncation() {
        let r = Message::parse(
            b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 10\r\n\r\nabc",
        );
        assert_eq!(r, Err(SipError::Truncated { got: 3, want: 10 }));
    }

    #[test]
    fn responses_go_back_to_the_source() {
        let m = Message::parse(REGISTER.as_bytes()).unwrap();
        let src: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        let r = response(
            &m,
            401,
            "Unauthorized",
            src,
            "t1",
            &[("WWW-Authenticate", "Digest realm=\"3402000000\"".into())],
            None,
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP 192.168.1.64:5060;rport=40000;branch=z9hG4bK1;received=10.0.0.7\r\n"),
            "{text}"
        );
        assert!(text.contains("To: <sip:34020000001320000001@3402000000>;tag=t1\r\n"));
        assert!(text.contains("CSeq: 1 REGISTER\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        // Our own response parses.
        let back = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(
            back.start,
            StartLine::Response {
                code: 401,
                reason: "Unauthorized".into()
            }
        );
    }

    #[test]
    fn tcp_framing_waits_for_the_whole_body() {
        let msg = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(frame_len(&msg[..20]), Ok(None));
        assert_eq!(frame_len(&msg[..msg.len() - 1]), Ok(None));
        let mut two = msg.to_vec();
        two.extend_from_slice(msg);
        assert_eq!(frame_len(&two), Ok(Some(msg.len())));
        assert!(frame_len(b"MESSAGE x SIP/2.0\r\nContent-Length: 999999\r\n\r\n").is_err());
    }
}
