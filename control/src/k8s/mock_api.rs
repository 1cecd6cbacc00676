//! A scripted API server for reconciler unit tests (DESIGN.md: tower-test, one
//! scenario per test, failing on a missing or extra call). Test-only: compiled
//! under `cfg(test)`, never into the shipped library.
#![allow(clippy::panic)]

use http::{Request, Response, StatusCode};
use kube::client::Body;
use tower_test::mock::{self, Handle};

/// One expected request and the answer to give.
#[derive(Debug)]
pub struct Exchange {
    pub method: &'static str,
    pub path: &'static str,
    /// Strings the request body must contain.
    pub body_has: Vec<&'static str>,
    pub status: u16,
    pub response: serde_json::Value,
}

/// A client whose requests go to the returned handle.
pub fn client() -> (kube::Client, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Answers `script` in order; panics on a request that differs, and on any request
/// after the script (the caller drops every client before awaiting this).
pub async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, script: Vec<Exchange>) {
    for ex in script {
        let (req, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("missing call: {} {}", ex.method, ex.path));
        assert_eq!(req.method().as_str(), ex.method, "method of {}", req.uri());
        assert_eq!(req.uri().path(), ex.path);
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        for needle in &ex.body_has {
            assert!(body.contains(needle), "{} lacks {needle}: {body}", ex.path);
        }
        let resp = Response::builder()
            .status(StatusCode::from_u16(ex.status).unwrap_or(StatusCode::OK))
            .body(Body::from(ex.response.to_string().into_bytes()))
            .unwrap_or_else(|_| Response::new(Body::from(Vec::new())));
        send.send_response(resp);
    }
    if let Some((req, _)) = handle.next_request().await {
        panic!("extra call: {} {}", req.method(), req.uri());
    }
}

/// A `Status` body as the API server sends with an error code.
pub fn status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("scripted {reason}"), "reason": reason, "code": code
    })
}
