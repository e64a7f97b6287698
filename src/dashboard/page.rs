//! The page and its assets, built into the binary (`include_str!`): no CDN, no web font, so
//! the dashboard works on a Pi with no way out to the internet.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
/// The script: polling, tiles and SVG charts, in plain JavaScript.
pub const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
/// The style sheet.
pub const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

/// A response with the asset and its type; `no-cache` so a new binary's page is picked up.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /assets/dashboard.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}
