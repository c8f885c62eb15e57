//! Reading the server's `/metrics` as Prometheus would (`prometheus-parse`).

use std::time::Duration;

use super::{raw_http_text, TestServer, TOKEN, WAIT};

/// Every sample of one scrape, parsed.
pub fn scrape(s: &TestServer) -> Vec<prometheus_parse::Sample> {
    let (status, body) = raw_http_text(&s.http, "GET", "/metrics", "", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("Prometheus text")
        .samples
}

/// The value of sample `name` with exactly `labels`; panics if there is none.
pub fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a single number"),
    }
}

/// Scrapes until `ok` holds (the hub's view settles a moment after an SDK call returns).
pub async fn scrape_until(
    s: &TestServer,
    what: &str,
    ok: impl Fn(&[prometheus_parse::Sample]) -> bool,
) -> Vec<prometheus_parse::Sample> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = scrape(s);
        if ok(&samples) {
            return samples;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
