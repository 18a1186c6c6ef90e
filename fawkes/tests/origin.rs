//! The origin check as configured on a socket (PROTOCOL §1.4): refusals are
//! HTTP 403 before `connect` runs.

mod support;

use std::sync::Arc;

use fawkes::CheckOrigin;
use support::{Client, Seen, observer, serve_probe};

#[tokio::test]
async fn same_host_is_the_default_and_other_hosts_get_403() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    // tungstenite sends `Host: 127.0.0.1:<port>`; scheme and port are ignored.
    for origin in ["http://127.0.0.1:9999", "https://127.0.0.1"] {
        let client = Client::connect_with(server.addr, "", &[("origin", origin)]).await;
        assert!(client.is_ok(), "{origin} refused");
    }
    assert!(Client::connect_with(server.addr, "", &[]).await.is_ok());
    let accepted = seen.pending().len();
    assert_eq!(accepted, 3);

    for origin in ["http://evil.example", "http://127.0.0.2", "null"] {
        assert_eq!(
            Client::connect_with(server.addr, "", &[("origin", origin)])
                .await
                .err(),
            Some(403),
            "{origin}"
        );
    }
    // Refused before `connect`.
    assert!(
        seen.pending()
            .iter()
            .all(|s| !matches!(s, Seen::Connected(..)))
    );
}

#[tokio::test]
async fn disabled_check_accepts_any_origin() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s.check_origin(CheckOrigin::Disabled)).await;
    for origin in ["http://evil.example", "null", "file://"] {
        let client = Client::connect_with(server.addr, "", &[("origin", origin)]).await;
        assert!(client.is_ok(), "{origin} refused");
    }
}

#[tokio::test]
async fn custom_check_decides_from_the_parsed_origin() {
    let (obs, _seen) = observer();
    let check = CheckOrigin::Custom(Arc::new(|origin: &http::Uri| {
        origin.host() == Some("good.example") && origin.scheme_str() == Some("https")
    }));
    let server = serve_probe(&obs, |s| s.check_origin(check)).await;
    assert!(
        Client::connect_with(server.addr, "", &[("origin", "https://good.example")])
            .await
            .is_ok()
    );
    for origin in ["http://good.example", "https://127.0.0.1", "null"] {
        assert_eq!(
            Client::connect_with(server.addr, "", &[("origin", origin)])
                .await
                .err(),
            Some(403),
            "{origin}"
        );
    }
    // Without an Origin header the function is not consulted.
    assert!(Client::connect_with(server.addr, "", &[]).await.is_ok());
}

#[tokio::test]
async fn list_check_accepts_matching_patterns_only() {
    let (obs, _seen) = observer();
    let check = CheckOrigin::list(["//*.good.example", "https://other.example:8443"]).unwrap();
    let server = serve_probe(&obs, |s| s.check_origin(check)).await;
    for origin in [
        "http://good.example",
        "https://a.b.good.example:1",
        "https://other.example:8443",
    ] {
        let client = Client::connect_with(server.addr, "", &[("origin", origin)]).await;
        assert!(client.is_ok(), "{origin} refused");
    }
    for origin in [
        "http://bad-good.example",
        "https://other.example",
        "http://127.0.0.1",
    ] {
        assert_eq!(
            Client::connect_with(server.addr, "", &[("origin", origin)])
                .await
                .err(),
            Some(403),
            "{origin}"
        );
    }
}
