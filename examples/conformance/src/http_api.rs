//! The HTTP API for tests and load tools: health, broadcast, disconnect,
//! presence, stats.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use fawkes::Endpoint;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[derive(Clone)]
struct Api {
    endpoint: Endpoint,
    node: String,
}

/// The API's routes.
pub(crate) fn router(endpoint: Endpoint, node: String) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/broadcast", post(broadcast))
        .route("/api/disconnect", post(disconnect))
        .route("/api/presence/{*topic}", get(presence))
        .route("/api/stats", get(stats))
        .with_state(Api { endpoint, node })
}

/// A 400 with `{"error": ...}`.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        tracing::info!(target: "fawkes_conformance::api", error = %self.0, "bad request");
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

/// Parses a JSON body, turning every failure into a 400 with a reason.
fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, BadRequest> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_type {
        return Err(BadRequest("expected content-type application/json".into()));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid json: {e}")))?;
    // serde would also take an array in field order; the API takes objects.
    if !value.is_object() {
        return Err(BadRequest("body must be a json object".into()));
    }
    serde_json::from_value(value).map_err(|e| BadRequest(format!("invalid body: {e}")))
}

async fn healthz(State(api): State<Api>) -> Json<Value> {
    Json(json!({"status": "ok", "node": api.node}))
}

#[derive(Deserialize)]
struct BroadcastBody {
    topic: String,
    event: String,
    payload: Value,
}

async fn broadcast(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, BadRequest> {
    let req: BroadcastBody = parse(&headers, &body)?;
    api.endpoint
        .broadcast(&req.topic, &req.event, req.payload)
        .map_err(|e| BadRequest(e.to_string()))?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct DisconnectBody {
    socket_id: String,
}

async fn disconnect(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, BadRequest> {
    let req: DisconnectBody = parse(&headers, &body)?;
    api.endpoint.disconnect(&req.socket_id);
    Ok(Json(json!({"ok": true})))
}

/// The topic's presence map, as `presence_state` carries it.
async fn presence(State(api): State<Api>, Path(topic): Path<String>) -> Response {
    let body = api.endpoint.presence().list_json(&topic);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn stats(State(api): State<Api>) -> Json<Value> {
    let stats = api.endpoint.stats();
    Json(json!({"sockets": stats.sockets, "channels": stats.channels, "node": api.node}))
}
