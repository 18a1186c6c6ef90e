//! The static pages and assets, embedded in the binary (no build step),
//! and `/healthz`.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every embedded file: its path, Content-Type and body.
pub const FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../assets/index.html")),
    ("/console", HTML, include_str!("../assets/console.html")),
    (
        "/assets/style.css",
        CSS,
        include_str!("../assets/style.css"),
    ),
    ("/assets/common.js", JS, include_str!("../assets/common.js")),
    ("/assets/player.js", JS, include_str!("../assets/player.js")),
    (
        "/assets/console.js",
        JS,
        include_str!("../assets/console.js"),
    ),
    (
        "/assets/favicon.svg",
        SVG,
        include_str!("../assets/favicon.svg"),
    ),
];

/// The pages' router.
pub fn router() -> Router {
    let mut router = Router::new().route("/healthz", get(|| async { "ok" }));
    for &(path, content_type, body) in FILES {
        // no-cache: browsers revalidate, so a new binary's pages show at once.
        router = router.route(
            path,
            get(move || async move {
                (
                    [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
                    body,
                )
                    .into_response()
            }),
        );
    }
    router
}
