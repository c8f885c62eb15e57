//! MANSCDP bodies (the XML carried by GB28181 MESSAGEs): decoding from the declared
//! encoding (GB2312, GBK, GB18030 or UTF-8), tolerant parsing (unescaped `&` and `<` in
//! text, no declaration), and building queries. Bounded: a body over 64 KiB or with more
//! than 10 000 catalog items is refused.

use encoding_rs::{Encoding, GB18030, UTF_8};
use quick_xml::events::Event;
use quick_xml::Reader;

/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_ITEMS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManscdpError {
    #[error("MANSCDP body larger than 64 KiB")]
    TooLarge,
    #[error("MANSCDP XML: {0}")]
    Xml(String),
    #[error("MANSCDP body lacks {0}")]
    Missing(&'static str),
    #[error("MANSCDP body has more than 10000 items")]
    TooManyItems,
}

/// One channel of a Catalog answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogItem {
    pub device_id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub status: String,
    pub parent_id: String,
    /// In a Catalog `Notify`: what happened to it (`ADD`, `DEL`, `UPDATE`, `ON`, `OFF`,
    /// `VLOST`, `DEFECT`); empty in a Catalog answer.
    pub event: String,
}

/// A parsed MANSCDP message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manscdp {
    /// `Notify`, `Response`, `Query` or `Control`.
    pub root: String,
    pub cmd_type: String,
    pub sn: u32,
    pub device_id: String,
    pub status: Option<String>,
    /// Catalog: how many items the whole answer has (it may span several MESSAGEs).
    pub sum_num: Option<u32>,
    pub items: Vec<CatalogItem>,
    /// DeviceControl: the PTZ command, 16 hex digits.
    pub ptz_cmd: Option<String>,
    /// Other top-level fields (DeviceInfo's Manufacturer, Model, Firmware; DeviceStatus's
    /// Online, Result...), at most 64.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The encoding named in the XML declaration, if any.
fn declared(bytes: &[u8]) -> Option<&'static Encoding> {
    let head = &bytes[..bytes.len().min(200)];
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let decl_end = head.find("?>")?;
    let decl = &head[..decl_end];
    let at = decl.find("encoding")?;
    let rest = decl[at + 8..].trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|q| matches!(q, '"' | '\''))?;
    let label = rest[quote.len_utf8()..].split(quote).next()?;
    Encoding::for_label(label.trim().as_bytes())
}

/// Decodes a body to text: the declared encoding (GB2312/GBK read as GB18030, their
/// superset), else UTF-8 when valid, else GB18030.
pub fn decode(bytes: &[u8]) -> Result<String, ManscdpError> {
    if bytes.len() > MAX_BODY {
        return Err(ManscdpError::TooLarge);
    }
    let enc = match declared(bytes) {
        Some(e) if e == UTF_8 => UTF_8,
        Some(_) => GB18030,
        None if std::str::from_utf8(bytes).is_ok() => UTF_8,
        None => GB18030,
    };
    Ok(enc.decode(bytes).0.into_owned())
}

/// Escapes what devices leave unescaped in text: a `&` that starts no entity, and a `<`
/// that starts no tag.
fn sanitize(xml: &str) -> String {
    let b = xml.as_bytes();
    let mut out = String::with_capacity(xml.len() + 16);
    for (i, c) in xml.char_indices() {
        match c {
            '&' => {
                let rest = &xml[i + 1..];
                let end = rest.find(';').filter(|e| *e <= 10);
                let entity = end.is_some_and(|e| {
                    let name = &rest[..e];
                    !name.is_empty()
                        && (name.starts_with('#')
                            || name.bytes().all(|x| x.is_ascii_alphanumeric()))
                });
                out.push_str(if entity { "&" } else { "&amp;" });
            }
            '<' => {
                let next = b.get(i + 1).copied().unwrap_or(b' ');
                let tag = next.is_ascii_alphabetic() || matches!(next, b'/' | b'?' | b'!' | b'_');
                out.push_str(if tag { "<" } else { "&lt;" });
            }
            c => out.push(c),
        }
    }
    out
}

impl Manscdp {
    /// Parses a MESSAGE body.
    pub fn parse(bytes: &[u8]) -> Result<Manscdp, ManscdpError> {
        let text = sanitize(&decode(bytes)?);
        let mut reader = Reader::from_str(&text);
        // Untrimmed: text next to an entity keeps its spaces; values are trimmed at the end tag.
        reader.config_mut().trim_text(false);
        let mut m = Manscdp::default();
        let mut path: Vec<String> = Vec::new();
        let mut item: Option<CatalogItem> = None;
        // Text of the element being read: quick-xml gives text and entity references in
        // separate pieces.
        let mut text_buf = String::new();
        loop {
            match reader
                .read_event()
                .map_err(|e| ManscdpError::Xml(e.to_string()))?
            {
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                    // Some devices put the fields in attributes of the root or of an
                    // Item (`<Notify CmdType="Keepalive" SN="1">`): read those too.
                    let attrs: Vec<(String, String)> = e
                        .attributes()
                        .flatten()
                        .take(32)
                        .map(|a| {
                            (
                                String::from_utf8_lossy(a.key.as_ref()).to_string(),
                                a.unescape_value()
                                    .map(|v| v.trim().to_string())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect();
                    if path.is_empty() {
                        m.root = name.clone();
                        for (k, v) in &attrs {
                            match k.as_str() {
                                "CmdType" => m.cmd_type = v.clone(),
                                "SN" => m.sn = v.parse().unwrap_or(m.sn),
                                "DeviceID" => m.device_id = v.clone(),
                                "SumNum" => m.sum_num = v.parse().ok(),
                                _ => {}
                            }
                        }
                    }
                    if name == "Item" && path.last().is_some_and(|p| p == "DeviceList") {
                        let mut it = CatalogItem::default();
                        for (k, v) in attrs {
                            match k.as_str() {
                                "DeviceID" => it.device_id = v,
                                "Name" => it.name = v,
                                "Status" => it.status = v,
                                "Event" => it.event = v,
                                _ => {}
                            }
                        }
                        item = Some(it);
                    }
                    if path.len() > 16 {
                        return Err(ManscdpError::Xml("nested too deep".into()));
                    }
                    path.push(name);
                    text_buf.clear();
                }
                Event::Text(t) => {
                    let v = t.decode().map_err(|e| ManscdpError::Xml(e.to_string()))?;
                    text_buf.push_str(&v);
                }
                Event::GeneralRef(r) => {
                    let name = r.decode().map_err(|e| ManscdpError::Xml(e.to_string()))?;
                    let c = match name.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        n => n
                            .strip_prefix("#x")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()))
                            .and_then(char::from_u32),
                    };
                    text_buf.extend(c);
                }
                Event::End(_) => {
                    let v = std::mem::take(&mut text_buf).trim().to_string();
                    let depth = path.len();
                    let tag = path.pop().unwrap_or_default();
                    if tag == "Item" {
                        if let Some(it) = item.take() {
                            if m.items.len() >= MAX_ITEMS {
                                return Err(ManscdpError::TooManyItems);
                            }
                            m.items.push(it);
                        }
                        continue;
                    }
                    match (&mut item, depth, tag.as_str()) {
                        (Some(it), _, t) => match t {
                            "DeviceID" => it.device_id = v,
                            "Name" => it.name = v,
                            "Manufacturer" => it.manufacturer = v,
                            "Model" => it.model = v,
                            "Status" => it.status = v,
                            "ParentID" => it.parent_id = v,
                            "Event" => it.event = v,
                            _ => {}
                        },
                        (None, 2, "CmdType") => m.cmd_type = v,
                        (None, 2, "SN") => {
                            m.sn = v
                                .parse()
                                .map_err(|_| ManscdpError::Xml(format!("SN {v:?}")))?
                        }
                        (None, 2, "DeviceID") => m.device_id = v,
                        (None, 2, "Status") => m.status = Some(v),
                        (None, 2, "SumNum") => m.sum_num = v.parse().ok(),
                        (None, 2, "PTZCmd") => m.ptz_cmd = Some(v),
                        (None, 2, t) if t != "DeviceList" && m.fields.len() < 64 => {
                            m.fields.insert(t.to_string(), v);
                        }
                        _ => {}
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if m.root.is_empty() {
            return Err(ManscdpError::Missing("a root element"));
        }
        if m.cmd_type.is_empty() {
            return Err(ManscdpError::Missing("CmdType"));
        }
        Ok(m)
    }
}

/// A `Query` body (Catalog, DeviceInfo, DeviceStatus), GB2312-encoded as devices expect.
pub fn query(cmd_type: &str, sn: u32, device_id: &str) -> Vec<u8> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>{cmd_type}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n</Query>\r\n"
    );
    encoding_rs::GBK.encode(&xml).0.into_owned()
}

/// Text escaped for an XML element.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn gb2312(xml: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(xml).0.into_owned()
}

/// A platform's PTZ `DeviceControl` for `channel_id` (`ptz_hex` from [`crate::ptz::Ptz`]).
pub fn ptz_control(sn: u32, channel_id: &str, ptz_hex: &str) -> Vec<u8> {
    gb2312(&format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Control>\r\n<CmdType>DeviceControl</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<PTZCmd>{}</PTZCmd>\r\n</Control>\r\n",
        esc(channel_id),
        esc(ptz_hex)
    ))
}

/// A device's keepalive `Notify`, GB2312-encoded.
pub fn keepalive(sn: u32, device_id: &str) -> Vec<u8> {
    gb2312(&format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
    ))
}

/// A device's Catalog `Response` carrying `items` of `sum_num` in all, GB2312-encoded.
pub fn catalog_response(
    sn: u32,
    device_id: &str,
    sum_num: usize,
    items: &[CatalogItem],
) -> Vec<u8> {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<SumNum>{sum_num}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
        items.len()
    );
    for i in items {
        xml.push_str(&format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>{}</Manufacturer>\r\n<Model>{}</Model>\r\n<ParentID>{}</ParentID>\r\n<Status>{}</Status>\r\n</Item>\r\n",
            esc(&i.device_id), esc(&i.name), esc(&i.manufacturer), esc(&i.model), esc(&i.parent_id), esc(&i.status)
        ));
    }
    xml.push_str("</DeviceList>\r\n</Response>\r\n");
    gb2312(&xml)
}

/// A device's Catalog `Notify` (a subscription's change report): each item with its
/// `Event`, GB2312-encoded.
pub fn catalog_notify(sn: u32, device_id: &str, items: &[CatalogItem]) -> Vec<u8> {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<SumNum>{n}</SumNum>\r\n<DeviceList Num=\"{n}\">\r\n",
        n = items.len()
    );
    for i in items {
        xml.push_str(&format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Event>{}</Event>\r\n<Name>{}</Name>\r\n<Manufacturer>{}</Manufacturer>\r\n<Model>{}</Model>\r\n<ParentID>{}</ParentID>\r\n<Status>{}</Status>\r\n</Item>\r\n",
            esc(&i.device_id), esc(&i.event), esc(&i.name), esc(&i.manufacturer), esc(&i.model), esc(&i.parent_id), esc(&i.status)
        ));
    }
    xml.push_str("</DeviceList>\r\n</Notify>\r\n");
    gb2312(&xml)
}

/// A device's `Response` to DeviceInfo or DeviceStatus (`Result` OK, plus `fields`).
pub fn response(cmd_type: &str, sn: u32, device_id: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>{cmd_type}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<Result>OK</Result>\r\n"
    );
    for (k, v) in fields {
        xml.push_str(&format!("<{k}>{}</{k}>\r\n", esc(v)));
    }
    xml.push_str("</Response>\r\n");
    gb2312(&xml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by the `manscdp` fuzzer: a byte that is not UTF-8 where the declaration's
    /// quote should be (its lossy decoding is 3 bytes long) made the label slice panic.
    #[test]
    fn a_broken_quote_in_the_declaration_does_not_panic() {
        let body = b"<?xml version=\"1.0\" encoding=\xa2GB2312\"?>\r\n<Response>\r\n\
            <CmdType>DeviceStatus</CmdType>\r\n<SN>3</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n\
            </Response>\r\n";
        assert!(declared(body).is_none());
        let text = decode(body).unwrap();
        assert!(text.contains("DeviceStatus"));
        let _ = Manscdp::parse(body);
        let reg = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/regressions/manscdp/broken-declaration-quote.xml"
        ))
        .unwrap();
        let _ = Manscdp::parse(&reg);
    }

    #[test]
    fn fields_in_attributes_as_some_devices_send_them() {
        let k = Manscdp::parse(
            br#"<Notify CmdType="Keepalive" SN="7"><DeviceID>34020000001320000007</DeviceID><Status>OK</Status></Notify>"#,
        )
        .unwrap();
        assert_eq!(
            (k.cmd_type.as_str(), k.sn, k.device_id.as_str()),
            ("Keepalive", 7, "34020000001320000007")
        );
        let c = Manscdp::parse(
            br#"<Response CmdType="Catalog" SN="1"><DeviceID>1</DeviceID><SumNum>1</SumNum><DeviceList Num="1"><Item><DeviceID>2</DeviceID><Name>a</Name></Item></DeviceList></Response>"#,
        )
        .unwrap();
        assert_eq!(
            (c.cmd_type.as_str(), c.sum_num, c.items.len()),
            ("Catalog", Some(1), 1)
        );
    }

    #[test]
    fn built_answers_parse_back_with_gb2312_names() {
        let items: Vec<CatalogItem> = (1..=2)
            .map(|i| CatalogItem {
                device_id: format!("3402000000131000000{i}"),
                name: format!("通道{i} & <门>"),
                status: "ON".into(),
                ..Default::default()
            })
            .collect();
        let m = Manscdp::parse(&catalog_response(7, "34020000001320000001", 2, &items)).unwrap();
        assert_eq!(
            (m.cmd_type.as_str(), m.sn, m.sum_num),
            ("Catalog", 7, Some(2))
        );
        assert_eq!(m.items, items);
        let mut changed = items.clone();
        changed[0].event = "DEL".into();
        changed[1].event = "ADD".into();
        let m = Manscdp::parse(&catalog_notify(8, "34020000001320000001", &changed)).unwrap();
        assert_eq!(
            (m.root.as_str(), m.cmd_type.as_str()),
            ("Notify", "Catalog")
        );
        assert_eq!(m.items, changed);
        let k = Manscdp::parse(&keepalive(3, "34020000001320000001")).unwrap();
        assert_eq!(
            (k.cmd_type.as_str(), k.status.as_deref()),
            ("Keepalive", Some("OK"))
        );
        let c =
            Manscdp::parse(&ptz_control(5, "34020000001310000001", "A50F0100000000B5")).unwrap();
        assert_eq!(
            (c.root.as_str(), c.cmd_type.as_str()),
            ("Control", "DeviceControl")
        );
        assert_eq!(c.ptz_cmd.as_deref(), Some("A50F0100000000B5"));
        let r = Manscdp::parse(&response(
            "DeviceInfo",
            9,
            "34020000001320000001",
            &[("Manufacturer", "fieldlink")],
        ))
        .unwrap();
        assert_eq!(
            (r.root.as_str(), r.cmd_type.as_str()),
            ("Response", "DeviceInfo")
        );
    }

    fn gb2312(s: &str) -> Vec<u8> {
        encoding_rs::GBK.encode(s).0.into_owned()
    }

    #[test]
    fn keepalive_in_gb2312() {
        let body = gb2312("<?xml version=\"1.0\" encoding=\"GB2312\"?>\n<Notify>\n<CmdType>Keepalive</CmdType>\n<SN>43</SN>\n<DeviceID>34020000001320000002</DeviceID>\n<Status>OK</Status>\n</Notify>\n");
        let m = Manscdp::parse(&body).unwrap();
        assert_eq!(
            (m.root.as_str(), m.cmd_type.as_str(), m.sn),
            ("Notify", "Keepalive", 43)
        );
        assert_eq!(
            (m.device_id.as_str(), m.status.as_deref()),
            ("34020000001320000002", Some("OK"))
        );
    }

    #[test]
    fn catalog_with_chinese_names_and_sloppy_text() {
        let body = gb2312(concat!(
            "<?xml version=\"1.0\" encoding=\"GB2312\"?>\n<Response><CmdType>Catalog</CmdType><SN>7</SN>",
            "<DeviceID>34020000001180000001</DeviceID><SumNum>3</SumNum><DeviceList Num=\"2\">",
            "<Item><DeviceID>34020000001320000001</DeviceID><Name>大门 摄像机 A&B</Name><Status>ON</Status></Item>",
            "<Item><DeviceID>34020000001320000002</DeviceID><Name>仓库<1></Name><Manufacturer>Hik</Manufacturer></Item>",
            "</DeviceList></Response>"
        ));
        let m = Manscdp::parse(&body).unwrap();
        assert_eq!(
            (m.cmd_type.as_str(), m.sum_num, m.items.len()),
            ("Catalog", Some(3), 2)
        );
        assert_eq!(m.items[0].name, "大门 摄像机 A&B");
        assert_eq!(m.items[0].status, "ON");
        assert_eq!(m.items[1].name, "仓库<1>");
        assert_eq!(m.items[1].manufacturer, "Hik");
    }

    #[test]
    fn utf8_without_declaration_and_errors() {
        let m = Manscdp::parse(
            "<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>x</DeviceID></Notify>"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(m.sn, 1);
        assert!(Manscdp::parse(b"<Notify><SN>1</SN></Notify>").is_err());
        assert!(Manscdp::parse(b"<Notify><CmdType>K</CmdType><SN>x</SN></Notify>").is_err());
        assert_eq!(
            Manscdp::parse(&vec![b' '; MAX_BODY + 1]),
            Err(ManscdpError::TooLarge)
        );
        let q = query("Catalog", 9, "34020000001180000001");
        let back = Manscdp::parse(&q).unwrap();
        assert_eq!(
            (back.root.as_str(), back.cmd_type.as_str(), back.sn),
            ("Query", "Catalog", 9)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manscdp::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_xml(s in "<(Notify|Response)>(<[A-Za-z]{1,8}>[^<>]{0,12}</[A-Za-z]{1,8}>){0,6}</(Notify|Response)>") {
            let _ = Manscdp::parse(s.as_bytes());
        }
    }
}
