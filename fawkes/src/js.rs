//! Fawkes's JavaScript client, served by the framework so that an app needs
//! no JavaScript build step: enable it with
//! [`SocketBuilder::client_js`](crate::SocketBuilder::client_js) and load it
//! in a page with
//! `import { Socket, Presence } from "/socket/fawkes.js"`.
//!
//! The client is an ES module with no dependencies whose API is phoenix.js's
//! (`Socket`, `Channel`, `Push`, `Presence`, `LongPoll`); its source and its
//! TypeScript declarations ship inside this crate ([`CLIENT`], [`TYPES`]).

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The client's source: one ES module.
pub const CLIENT: &str = include_str!("../js/fawkes.js");

/// The client's TypeScript declarations (`fawkes.d.ts`).
pub const TYPES: &str = include_str!("../js/fawkes.d.ts");

/// A strong validator of [`CLIENT`], so browsers revalidate with a cheap 304.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(CLIENT.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
});

/// Answers a request for the client: the module, or `304 Not Modified` when
/// the request's `If-None-Match` names the current version.
pub async fn serve(headers: HeaderMap) -> Response {
    let etag = ETAG.clone();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let common = [
        (header::ETAG, etag),
        // Revalidate each time: an upgraded server is picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        CLIENT,
    )
        .into_response()
}
