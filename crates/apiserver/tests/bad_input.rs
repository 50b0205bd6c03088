//! Bad input answers a 4xx metav1.Status and changes nothing.

use anyhow::Result;
use axum::body::Body;
use berth_apiserver::ApiServer;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(server: &ApiServer, req: Request<Body>) -> Result<(StatusCode, Value)> {
    let resp = server.router().oneshot(req).await?;
    let code = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn req(method: &str, uri: &str, ct: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(body.into())
        .unwrap()
}

async fn configmaps(server: &ApiServer) -> Result<(Vec<Value>, String)> {
    let (code, list) = call(
        server,
        req(
            "GET",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Body::empty(),
        ),
    )
    .await?;
    assert_eq!(code, StatusCode::OK);
    Ok((
        list["items"].as_array().cloned().unwrap_or_default(),
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    ))
}

#[tokio::test]
async fn bad_input_is_a_status_and_changes_nothing() -> Result<()> {
    let server = ApiServer::in_memory().await?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
    let (code, created) = call(
        &server,
        req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            cm.to_string(),
        ),
    )
    .await?;
    assert_eq!(code, StatusCode::CREATED);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = configmaps(&server).await?;

    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
        "data": {"k": "x".repeat(3 * 1024 * 1024 + 1)}});
    let mut renamed = cm.clone();
    renamed["metadata"]["name"] = json!("b");
    let mut stale = cm.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["data"]["k"] = json!("stale");
    let mut unknown = cm.clone();
    unknown["metadata"]["name"] = json!("u");
    unknown["spec"] = json!({"bogus": 1});
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                "{not json",
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/yaml",
                "a: [b",
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                "[1]",
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "w"}})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"}})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                json!({"metadata": {"name": "w"}, "data": {"k": 5}}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                json!({"metadata": {"name": "Not_Valid"}}).to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                "application/json",
                unknown.to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                big.to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
        ),
        (
            req(
                "PUT",
                "/api/v1/namespaces/default/configmaps/a",
                "application/json",
                renamed.to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "PUT",
                "/api/v1/namespaces/default/configmaps/a",
                "application/json",
                stale.to_string(),
            ),
            StatusCode::CONFLICT,
            "Conflict",
        ),
        (
            req(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/a",
                "application/merge-patch+json",
                "{oops",
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/a",
                "application/json-patch+json",
                json!([{"op": "test", "path": "/data/k", "value": "nope"}]).to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
        ),
        (
            req(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/a",
                "text/plain",
                "{}",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
        ),
        (
            req(
                "GET",
                "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(b",
                "application/json",
                Body::empty(),
            ),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            req(
                "GET",
                "/api/v1/namespaces/default/nothings",
                "application/json",
                Body::empty(),
            ),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            req(
                "POST",
                "/api/v1/namespaces/nowhere/configmaps",
                "application/json",
                json!({"metadata": {"name": "n"}}).to_string(),
            ),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
    ];
    for (request, want_code, want_reason) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (code, status) = call(&server, request).await?;
        assert_eq!(code, want_code, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["reason"], want_reason, "{what}: {status}");
        assert_eq!(status["code"], want_code.as_u16(), "{what}");
    }
    let after = configmaps(&server).await?;
    assert_eq!(before, after, "no state change");
    assert_eq!(after.1, rv);

    // A token-protected server refuses requests without it.
    let guarded = server.clone().with_token("s3cret");
    let (code, status) = call(
        &guarded,
        req(
            "GET",
            "/api/v1/namespaces",
            "application/json",
            Body::empty(),
        ),
    )
    .await?;
    assert_eq!(
        (code, status["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Unauthorized"))
    );
    let ok = Request::get("/api/v1/namespaces")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())?;
    assert_eq!(call(&guarded, ok).await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn discovery_openapi_and_tables() -> Result<()> {
    let server = ApiServer::in_memory().await?;
    let get = |uri: &str, accept: &str| {
        Request::get(uri)
            .header("accept", accept)
            .body(Body::empty())
            .unwrap()
    };
    let (code, v) = call(&server, get("/api/v1", "application/json")).await?;
    assert_eq!(code, StatusCode::OK);
    assert!(
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/binding")
    );
    let (_, v) = call(
        &server,
        get(
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        ),
    )
    .await?;
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps")
    );
    let (_, v) = call(&server, get("/openapi/v3", "application/json")).await?;
    let url = v["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, doc) = call(&server, get(&url, "application/json")).await?;
    assert_eq!(code, StatusCode::OK);
    let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    assert_eq!(
        doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
        "name"
    );
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
    let (_, v2) = call(&server, get("/openapi/v2", "application/json")).await?;
    assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());

    let (_, table) = call(
        &server,
        get(
            "/api/v1/namespaces",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        ),
    )
    .await?;
    assert_eq!(table["kind"], "Table");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Name", "Status", "Age"]);
    assert_eq!(table["rows"].as_array().unwrap().len(), 4);
    assert_eq!(table["rows"][0]["cells"][1], "Active");
    Ok(())
}
