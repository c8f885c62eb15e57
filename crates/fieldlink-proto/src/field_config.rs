//! The field device's `config.json` (SPEC §7 shape) checked whole: every problem, each with
//! its JSON path, instead of the first one serde meets (`fieldlink field --check`). What
//! needs the file system or the media stack is asked of the caller ([`Outside`]), so this
//! stays pure and can be fuzzed.

use serde_json::Value;

/// The checks this module cannot make itself; each answers a problem, or `None`.
pub trait Outside {
    /// The file of a `file://` source.
    fn file(&self, path: &str) -> Option<String>;
    /// The `certificate` PEM (a path relative to the config file's directory).
    fn certificate(&self, path: &str) -> Option<String>;
    /// An `rtsp://` camera URL.
    fn rtsp(&self, url: &str) -> Option<String>;
    /// A `network_bind` address: can a UDP socket be bound on it here?
    fn bind(&self, ip: std::net::IpAddr) -> Option<String>;
}

/// Takes every file and camera as fine: only the config's own shape is checked.
pub struct ShapeOnly;

impl Outside for ShapeOnly {
    fn file(&self, _: &str) -> Option<String> {
        None
    }
    fn certificate(&self, _: &str) -> Option<String> {
        None
    }
    fn rtsp(&self, _: &str) -> Option<String> {
        None
    }
    fn bind(&self, _: std::net::IpAddr) -> Option<String> {
        None
    }
}

const TOP: [&str; 17] = [
    "device_id",
    "projectid",
    "password",
    "device_name",
    "device_streams",
    "cloud_mode",
    "certificate",
    "streams_config",
    "server",
    "auto_permission",
    "audio_enable",
    "audio_receive",
    "audio_external",
    "audio_play",
    "audio_record",
    "network_bind",
    "media_trans_mode",
];
const STREAM: [&str; 6] = ["fps", "bps", "width", "height", "protocol", "cameras"];
const CAMERA: [&str; 6] = ["width", "height", "protocol", "url", "username", "password"];

fn unknown(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
    path: &str,
    out: &mut Vec<String>,
) {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            out.push(format!(
                "{path}.{k}: unknown key (known: {})",
                known.join(", ")
            ));
        }
    }
}

fn int_in(v: Option<&Value>, lo: u64, hi: u64, path: &str, out: &mut Vec<String>) {
    if let Some(v) = v {
        match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => {}
            _ => out.push(format!("{path}: {v} is not a whole number in {lo}..={hi}")),
        }
    }
}

fn string(v: Option<&Value>, path: &str, required: bool, out: &mut Vec<String>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            out.push(format!("{path}: {other} is not a string"));
            None
        }
        None if required => {
            out.push(format!("{path}: missing"));
            None
        }
        None => None,
    }
}

fn check_url(url: &str, path: &str, outside: &dyn Outside, out: &mut Vec<String>) {
    if url == "test://pattern" {
        return;
    }
    if let Some(file) = url.strip_prefix("file://") {
        if let Some(e) = outside.file(file) {
            out.push(format!("{path}: {e}"));
        }
        return;
    }
    if url.starts_with("rtsps://") {
        out.push(format!(
            "{path}: rtsps:// (RTSP over TLS) is not supported; use rtsp://"
        ));
        return;
    }
    if url.starts_with("rtsp://") {
        if let Some(e) = outside.rtsp(url) {
            out.push(format!("{path}: {e}"));
        }
        return;
    }
    out.push(format!(
        "{path}: {url:?} is not a source (test://pattern, file://PATH, rtsp://...)"
    ));
}

/// Every problem found in `v`, as `$.path: what is wrong`.
pub fn check(v: &Value, outside: &dyn Outside) -> Vec<String> {
    let mut out = Vec::new();
    let Some(root) = v.as_object() else {
        return vec!["$: the config must be a JSON object".into()];
    };
    unknown(root, &TOP, "$", &mut out);
    for (k, validate) in [("device_id", true), ("projectid", true)] {
        if let Some(s) = string(root.get(k), &format!("$.{k}"), validate, &mut out) {
            if let Err(e) = crate::ids::validate_part(&s) {
                out.push(format!("$.{k}: {e}"));
            }
        }
    }
    string(root.get("password"), "$.password", true, &mut out);
    string(root.get("device_name"), "$.device_name", false, &mut out);
    string(root.get("cloud_mode"), "$.cloud_mode", false, &mut out);
    if let Some(c) = string(root.get("certificate"), "$.certificate", false, &mut out) {
        if let Some(e) = outside.certificate(&c) {
            out.push(format!("$.certificate: {e}"));
        }
    }
    if let Some(s) = string(root.get("server"), "$.server", false, &mut out) {
        if !(s.starts_with("ws://") || s.starts_with("wss://")) {
            out.push(format!("$.server: {s:?} is not a ws:// or wss:// URL"));
        }
    }
    int_in(
        root.get("auto_permission"),
        0,
        1,
        "$.auto_permission",
        &mut out,
    );
    for k in ["audio_enable", "audio_receive", "audio_external"] {
        int_in(root.get(k), 0, 1, &format!("$.{k}"), &mut out);
    }
    for k in ["audio_play", "audio_record"] {
        if let Some(d) = string(root.get(k), &format!("$.{k}"), false, &mut out) {
            if d.trim().is_empty() {
                out.push(format!("$.{k}: empty device name"));
            }
        }
    }
    // SPEC §9: local addresses, each once, bindable here; the mode of several paths.
    match root.get("network_bind") {
        None => {}
        Some(Value::Array(a)) => {
            let mut seen = Vec::new();
            for (i, v) in a.iter().enumerate() {
                let p = format!("$.network_bind[{i}]");
                match v.as_str().map(str::parse::<std::net::IpAddr>) {
                    Some(Ok(ip)) if seen.contains(&ip) => {
                        out.push(format!("{p}: {ip} is listed twice"))
                    }
                    Some(Ok(ip)) => {
                        if let Some(e) = outside.bind(ip) {
                            out.push(format!("{p}: {e}"));
                        }
                        seen.push(ip);
                    }
                    _ => out.push(format!("{p}: {v} is not an IP address")),
                }
            }
            if a.len() > crate::bond::MAX_PATHS {
                out.push(format!(
                    "$.network_bind: {} addresses, at most {}",
                    a.len(),
                    crate::bond::MAX_PATHS
                ));
            }
        }
        Some(other) => out.push(format!(
            "$.network_bind: {other} is not an array of addresses"
        )),
    }
    int_in(
        root.get("media_trans_mode"),
        1,
        3,
        "$.media_trans_mode",
        &mut out,
    );
    int_in(
        root.get("device_streams"),
        0,
        16,
        "$.device_streams",
        &mut out,
    );
    let streams = match root.get("streams_config") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            out.push(format!("$.streams_config: {other} is not an array"));
            Vec::new()
        }
    };
    if let (Some(n), false) = (
        root.get("device_streams").and_then(Value::as_u64),
        streams.is_empty(),
    ) {
        if n as usize != streams.len() {
            out.push(format!(
                "$.device_streams: {n}, but $.streams_config has {} entries",
                streams.len()
            ));
        }
    }
    for (i, s) in streams.iter().enumerate() {
        let p = format!("$.streams_config[{i}]");
        let Some(obj) = s.as_object() else {
            out.push(format!("{p}: not an object"));
            continue;
        };
        unknown(obj, &STREAM, &p, &mut out);
        if let Some(f) = obj.get("fps") {
            if !f.as_f64().is_some_and(|f| f > 0.0 && f <= 240.0) {
                out.push(format!("{p}.fps: {f} is not in (0, 240]"));
            }
        }
        int_in(obj.get("bps"), 16, 100_000, &format!("{p}.bps"), &mut out);
        int_in(obj.get("width"), 16, 7680, &format!("{p}.width"), &mut out);
        int_in(
            obj.get("height"),
            16,
            4320,
            &format!("{p}.height"),
            &mut out,
        );
        if let Some(m) = string(
            obj.get("protocol"),
            &format!("{p}.protocol"),
            false,
            &mut out,
        ) {
            if !matches!(m.as_str(), "rtsp_enc" | "normal") {
                out.push(format!(
                    "{p}.protocol: {m:?} is neither \"rtsp_enc\" nor \"normal\""
                ));
            }
        }
        let cams = match obj.get("cameras") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                out.push(format!("{p}.cameras: {other} is not an array"));
                Vec::new()
            }
        };
        if cams.len() > 1 {
            out.push(format!(
                "{p}.cameras: {} cameras, but a stream has one source (cameras[0]); give each camera its own stream",
                cams.len()
            ));
        }
        for (j, c) in cams.iter().enumerate() {
            let cp = format!("{p}.cameras[{j}]");
            let Some(cobj) = c.as_object() else {
                out.push(format!("{cp}: not an object"));
                continue;
            };
            unknown(cobj, &CAMERA, &cp, &mut out);
            int_in(
                cobj.get("width"),
                16,
                7680,
                &format!("{cp}.width"),
                &mut out,
            );
            int_in(
                cobj.get("height"),
                16,
                4320,
                &format!("{cp}.height"),
                &mut out,
            );
            int_in(
                cobj.get("protocol"),
                0,
                1,
                &format!("{cp}.protocol"),
                &mut out,
            );
            for key in ["username", "password"] {
                string(cobj.get(key), &format!("{cp}.{key}"), false, &mut out);
            }
            if let Some(u) = string(cobj.get("url"), &format!("{cp}.url"), true, &mut out) {
                check_url(&u, &format!("{cp}.url"), outside, &mut out);
                let passthrough = obj.get("protocol").and_then(Value::as_str) == Some("rtsp_enc");
                if passthrough && !u.starts_with("rtsp://") {
                    out.push(format!(
                        "{cp}.url: protocol \"rtsp_enc\" (passthrough) needs an rtsp:// camera"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Files: only `here.pem` exists; RTSP: a URL needs something after `rtsp://`;
    /// addresses: only 127.0.0.x can be bound.
    struct Fake;
    impl Outside for Fake {
        fn file(&self, path: &str) -> Option<String> {
            Some(format!("{path} is not a readable file"))
        }
        fn certificate(&self, path: &str) -> Option<String> {
            (path != "here.pem").then(|| format!("{path} is not a readable file"))
        }
        fn rtsp(&self, url: &str) -> Option<String> {
            (url == "rtsp://").then(|| "camera URL has no host".to_string())
        }
        fn bind(&self, ip: std::net::IpAddr) -> Option<String> {
            (!ip.is_loopback()).then(|| format!("{ip} is not an address of this machine"))
        }
    }

    #[test]
    fn network_bind_and_media_trans_mode_are_checked() {
        let v = json!({"device_id": "f", "projectid": "p", "password": "x",
            "network_bind": ["127.0.0.2", "127.0.0.3"], "media_trans_mode": 1});
        assert_eq!(check(&v), Vec::<String>::new());
        let v = json!({"device_id": "f", "projectid": "p", "password": "x",
            "network_bind": ["127.0.0.2", "10.9.9.9", "nonsense", "127.0.0.2"],
            "media_trans_mode": 4});
        assert_eq!(
            check(&v),
            [
                "$.network_bind[1]: 10.9.9.9 is not an address of this machine",
                "$.network_bind[2]: \"nonsense\" is not an IP address",
                "$.network_bind[3]: 127.0.0.2 is listed twice",
                "$.media_trans_mode: 4 is not a whole number in 1..=3",
            ]
        );
    }

    fn check(v: &Value) -> Vec<String> {
        super::check(v, &Fake)
    }

    #[test]
    fn a_good_config_has_no_problems() {
        let v = json!({"device_id": "f", "projectid": "p", "password": "x", "device_streams": 1,
            "streams_config": [{"fps": 25, "bps": 800, "width": 640, "height": 360,
                "cameras": [{"url": "test://pattern"}]}]});
        assert_eq!(check(&v), Vec::<String>::new());
        let v = json!({"device_id": "f", "projectid": "p", "password": "x", "certificate": "here.pem",
            "streams_config": [{"protocol": "rtsp_enc",
                "cameras": [{"protocol": 1, "url": "rtsp://u:p@127.0.0.1:8554/cam", "username": "a"}]}]});
        assert_eq!(check(&v), Vec::<String>::new());
    }

    #[test]
    fn camera_urls_and_modes_are_checked() {
        let v = json!({"device_id": "f", "projectid": "p", "password": "x",
            "streams_config": [
                {"protocol": "rtsp_enc", "cameras": [{"url": "test://pattern"}]},
                {"cameras": [{"url": "rtsps://127.0.0.1/cam", "password": 5}]},
                {"cameras": [{"url": "rtsp://"}, {"url": "test://pattern"}]}]});
        let p = check(&v);
        for want in [
            "$.streams_config[0].cameras[0].url: protocol \"rtsp_enc\"",
            "$.streams_config[1].cameras[0].url: rtsps://",
            "$.streams_config[1].cameras[0].password: 5 is not a string",
            "$.streams_config[2].cameras[0].url: camera URL",
            "$.streams_config[2].cameras: 2 cameras",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(want)),
                "{want} not in {p:#?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let v = json!({"device_id": "f/x", "password": 3, "colour": "red", "device_streams": 2,
            "server": "http://x", "certificate": "gone.pem",
            "streams_config": [{"fps": 0, "protocol": "raw", "cameras": [{"url": "ftp://x", "zoom": 1}]}]});
        let p = check(&v);
        for want in [
            "$.colour: unknown key",
            "$.device_id:",
            "$.projectid: missing",
            "$.password: 3 is not a string",
            "$.server:",
            "$.certificate: gone.pem is not a readable file",
            "$.device_streams: 2, but $.streams_config has 1 entries",
            "$.streams_config[0].fps:",
            "$.streams_config[0].protocol:",
            "$.streams_config[0].cameras[0].zoom: unknown key",
            "$.streams_config[0].cameras[0].url:",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(want)),
                "{want} not in {p:#?}"
            );
        }
    }
}
