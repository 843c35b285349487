//! `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI).
//!
//! The document is not written by hand: every route is registered through
//! `utoipa_axum::routes!`, which takes the path, method, parameters and
//! answers from the handler's own `#[utoipa::path]` and the `ToSchema`
//! types it returns, so a route and its description are one declaration.
//! Swagger UI's files are compiled into the binary (`vendored`): the page
//! loads nothing from anywhere but this gateway.

use axum::Router;
use utoipa::openapi::OpenApi as Document;
use utoipa::{IntoResponses, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::AppState;
pub use crate::error::ErrorBody;

/// Where the document is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where Swagger UI is served (`/docs` redirects to `/docs/`).
pub const DOCS_PATH: &str = "/docs";

/// What the document says before any route is added.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "split-serve gateway",
        description = "Image-model inference over HTTP: the gateway's own v1 API, the Open Inference \
                       Protocol (KServe v2) REST API, health and metrics. Errors are always \
                       `{\"error\", \"type\"}` (`ErrorBody`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "v1", description = "The gateway's own API: images in, labels, boxes or masks out."),
        (name = "jobs", description = "Iterative models (many steps per answer): submit a job, watch its progress, cancel it, fetch its result."),
        (name = "v2", description = "The Open Inference Protocol (KServe v2 / Triton) REST API."),
        (name = "health", description = "Liveness and readiness for load balancers and orchestrators."),
        (name = "operations", description = "Hosts, their counters, and Prometheus metrics."),
    ),
    components(schemas(ErrorBody)),
)]
pub struct ApiDoc;

/// An empty router whose document starts as [`ApiDoc`]: routes are added
/// with `.routes(routes!(handler))`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
}

/// The routes, plus the document made from them and the UI that shows it.
pub fn serve(routes: OpenApiRouter<AppState>) -> Router<AppState> {
    let (router, document) = routes.split_for_parts();
    router.merge(ui(document))
}

/// Swagger UI over `document`. The validator is off: by default the page
/// sends the document to validator.swagger.io, a request to a third party
/// that an offline or private deployment must not make.
fn ui(document: Document) -> SwaggerUi {
    SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, document).config(Config::default().validator_url("none"))
}

/// Raw bytes in a body (an image, pixels, or tensor data after a JSON header).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

/// The errors of a route that only looks a model up: not served here, or
/// every host of it down.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum LookupErrors {
    /// No host serves this model (or version).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Its hosts are loading, warming or restarting; `Retry-After` says when to retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of a route that reads a body and runs the model.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum InferErrors {
    /// A parameter, the body, or the image is invalid (the message names it).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No host serves this model (or version).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body did not arrive within the gateway's body timeout.
    #[response(status = 408)]
    BodyTimeout(ErrorBody),
    /// The body, or the image's pixel count, is over the gateway's limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body's Content-Type or Content-Encoding is not one this route reads.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// A fault of the gateway or the model, not of the request; the details are in the log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The host is not ready or is at capacity; `Retry-After` says when to retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// No answer within the deadline (`timeout_ms`, or the gateway's).
    #[response(status = 504)]
    DeadlineExceeded(ErrorBody),
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use crate::routes::test_app as app;

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
    }

    async fn document(app: &axum::Router) -> Value {
        let (status, headers, body) = get(app, super::SPEC_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
        serde_json::from_slice(&body).expect("/openapi.json is JSON")
    }

    /// Each documented operation, as (METHOD, path template).
    fn operations(document: &Value) -> Vec<(String, String)> {
        let paths = document["paths"].as_object().expect("paths");
        let mut found = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().expect("a path item").keys() {
                found.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        found
    }

    #[tokio::test]
    async fn the_document_is_openapi_3_1_and_every_operation_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&dir);
        let document = document(&app).await;
        assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", document["openapi"]);
        let operations = operations(&document);
        let mut ids: Vec<&str> = document["paths"].as_object().unwrap().values().flat_map(|item| item.as_object().unwrap().values()).filter_map(|op| op["operationId"].as_str()).collect();
        assert_eq!(ids.len(), operations.len(), "every operation has an operationId");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), operations.len(), "operationIds are unique");
        for (method, path) in [("POST", "/v1/models/{name}/predict"), ("GET", "/health/ready"), ("GET", "/metrics"), ("POST", "/v2/models/{name}/versions/{version}/infer")] {
            assert!(operations.contains(&(method.into(), path.into())), "{method} {path} is not documented");
        }
        let error = &document["components"]["schemas"]["ErrorBody"]["properties"];
        assert!(error["error"].is_object() && error["type"].is_object(), "{error}");
        // Every documented operation reaches a handler: the fallback's 404
        // says "no such route", a wrong method is 405.
        for (method, path) in &operations {
            let uri = path.replace("{name}", "digits").replace("{version}", "1");
            let request = Request::builder().method(method.as_str()).uri(&uri).body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(!String::from_utf8_lossy(&body).contains("no such route"), "{method} {uri} is documented but not served");
        }
    }

    /// The router cannot be given a route without its description: every
    /// route in src/routes is registered with `routes!` (which takes the
    /// handler's `#[utoipa::path]`), never with axum's `route`, and the
    /// document has one operation per `routes!`.
    #[tokio::test]
    async fn every_route_is_registered_with_its_description() {
        let mut sources = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes"))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    sources.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        let mut registered = 0;
        for (path, text) in &sources {
            for undocumented in [".route(\"", ".route_service(\"", ".nest(\"", ".nest_service(\""] {
                assert!(!text.contains(undocumented), "{} registers a route with {undocumented}: use .routes(routes!(handler)) and #[utoipa::path]", path.display());
            }
            registered += text.matches(".routes(routes!(").count();
        }
        let dir = tempfile::tempdir().unwrap();
        let document = document(&app(&dir)).await;
        assert_eq!(operations(&document).len(), registered, "one documented operation per routes!(...)");
    }

    /// The attribute values of `name` (src or href) in `html`.
    fn links<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
        let needle = format!("{name}=\"");
        html.match_indices(&needle).map(|(i, _)| &html[i + needle.len()..]).filter_map(|rest| rest.split('"').next()).collect()
    }

    #[tokio::test]
    async fn docs_is_swagger_ui_served_entirely_from_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&dir);
        let (status, headers, _) = get(&app, "/docs").await;
        assert!(status.is_redirection(), "{status}");
        assert_eq!(headers[header::LOCATION], "/docs/");
        let (status, headers, body) = get(&app, "/docs/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let html = String::from_utf8(body).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("\"//"), "the page names another origin:\n{html}");
        let assets: Vec<&str> = links(&html, "src").into_iter().chain(links(&html, "href")).collect();
        assert!(assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
        for asset in &assets {
            let (status, _, body) = get(&app, &format!("/docs/{}", asset.trim_start_matches("./"))).await;
            assert_eq!(status, StatusCode::OK, "{asset}");
            assert!(!body.is_empty(), "{asset}");
        }
        // The page's own settings: this gateway's document, and no
        // validator (by default it sends the document to validator.swagger.io).
        let (status, _, body) = get(&app, "/docs/swagger-initializer.js").await;
        assert_eq!(status, StatusCode::OK);
        let initializer = String::from_utf8(body).unwrap();
        assert!(initializer.contains(super::SPEC_PATH) && initializer.contains("\"validatorUrl\": \"none\""), "{initializer}");
        assert!(!initializer.contains("http://") && !initializer.contains("https://"), "{initializer}");
    }
}
