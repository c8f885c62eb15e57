//! The web console: a remote device in the browser (`/`) and the administration page
//! (`/admin`). The assets are a handful of files compiled into the binary, so the
//! server needs nothing at run time and no CDN: plain `include_str!` is all it takes.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Scripts and styles only from this server; media and signalling to it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// (name, content type, content) of every asset under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css", include_str!("../web/style.css")),
    (
        "common.js",
        "text/javascript",
        include_str!("../web/common.js"),
    ),
    (
        "signal.js",
        "text/javascript",
        include_str!("../web/signal.js"),
    ),
    (
        "control.js",
        "text/javascript",
        include_str!("../web/control.js"),
    ),
    (
        "diagnosis.js",
        "text/javascript",
        include_str!("../web/diagnosis.js"),
    ),
    (
        "voice.js",
        "text/javascript",
        include_str!("../web/voice.js"),
    ),
    (
        "console.js",
        "text/javascript",
        include_str!("../web/console.js"),
    ),
    (
        "admin.js",
        "text/javascript",
        include_str!("../web/admin.js"),
    ),
];

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, body)) => {
            let mut r = (*body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
            // Assets change with the binary: revalidate rather than serve an old console.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { page(include_str!("../web/console.html")) }),
        )
        .route(
            "/admin",
            get(|| async { page(include_str!("../web/admin.html")) }),
        )
        // The earlier test page's address.
        .route("/watch", get(|| async { Redirect::permanent("/") }))
        .route("/assets/{name}", get(asset))
}
