//! The opt-in route that serves the JavaScript client (`SocketBuilder::client_js`).

mod support;

use fawkes::{Assigns, ConnectInfo, Endpoint, Params, Refused, Socket};
use support::serve;

struct Anyone;

impl Socket for Anyone {
    async fn connect(&self, _: &Params, _: &ConnectInfo) -> Result<Assigns, Refused> {
        Ok(Assigns::new())
    }
}

#[tokio::test]
async fn serves_the_client_with_a_validator() {
    let (router, endpoint) = Endpoint::builder()
        .socket("/socket", Anyone)
        .client_js()
        .build();
    let server = serve(router, endpoint).await;
    let url = format!("http://{}/socket/fawkes.js", server.addr);
    let http = reqwest::Client::new();

    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert_eq!(
        headers["content-type"], "text/javascript; charset=utf-8",
        "browsers run modules only with a JavaScript type"
    );
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(res.text().await.unwrap(), fawkes::js::CLIENT);

    // The same version again: 304 with no body; weak and listed tags match.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"old\", {etag}"),
    ] {
        let res = http
            .get(&url)
            .header("if-none-match", tag.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 304, "{tag}");
        assert_eq!(res.headers()["etag"], etag.as_str());
        assert!(res.text().await.unwrap().is_empty());
    }
    // Another version: the whole module.
    let res = http
        .get(&url)
        .header("if-none-match", "\"0123\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), fawkes::js::CLIENT);

    let res = http.head(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn off_by_default() {
    let (router, endpoint) = Endpoint::builder().socket("/socket", Anyone).build();
    let server = serve(router, endpoint).await;
    let res = reqwest::get(format!("http://{}/socket/fawkes.js", server.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    server.stop().await;
}
