//! The HTTP/REST side of the Open Inference Protocol: axum routes over a [`ModelSet`], served by
//! hyper with header timeouts, a connection cap and graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::TensorInfo;
use crate::protocol::{encode_response, parse_request, HEADER_LENGTH};
use crate::repository::{ModelSet, Served};

/// The server's limits; each is a command-line option with this default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (`--max-body-bytes`): 413 above it.
    pub max_body_bytes: usize,
    /// Most infer requests answered at once (`--max-concurrency`): 503 above it.
    pub max_concurrency: usize,
    /// Most open connections (`--max-connections`): more wait to be accepted.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (`--header-timeout-ms`); hyper's
    /// timer also runs while a kept-alive connection waits for its next request, so it is the
    /// idle timeout too.
    pub header_timeout: Duration,
    /// Longest an infer request may take, body and queue included (`--request-timeout-ms`): 408.
    pub request_timeout: Duration,
    /// Longest the server waits for in-flight requests when it stops (`--shutdown-timeout-ms`).
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_concurrency: 1024,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

struct App {
    models: ModelSet,
    metrics: Metrics,
    limits: Limits,
    ready: AtomicBool,
    permits: Arc<Semaphore>,
}

type Shared = Arc<App>;

/// The routes of the protocol, the metrics and the errors, over `models`.
fn router(app: Shared) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_at))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route (the protocol's are under /v2)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Counts every response by status and the requests in flight.
async fn count(State(app): State<Shared>, req: Request, next: Next) -> Response {
    app.metrics.in_flight.inc();
    let resp = next.run(req).await;
    app.metrics.in_flight.dec();
    app.metrics
        .responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    if resp.status().is_client_error() || resp.status().is_server_error() {
        tracing::debug!(status = resp.status().as_u16(), "error response");
    }
    resp
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "stn-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(app): State<Shared>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        Json(json!({ "ready": true })).into_response()
    } else {
        ApiError::unavailable("shutting down").into_response()
    }
}

fn tensor_metadata(t: &TensorInfo) -> Value {
    let mut shape = vec![-1i64];
    shape.extend(t.dims.iter().map(|&d| d as i64));
    json!({ "name": t.name, "datatype": "FP32", "shape": shape })
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let served = app.models.get(name, version)?;
    let info = &served.info;
    let versions: Vec<String> = match version {
        Some(_) => vec![info.version.to_string()],
        None => app
            .models
            .versions(name)
            .iter()
            .map(u64::to_string)
            .collect(),
    };
    Ok(Json(json!({
        "name": info.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [tensor_metadata(&info.input)],
        "outputs": info.outputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
    })))
}

async fn model_metadata(
    State(app): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, None)
}

async fn model_metadata_at(
    State(app): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, Some(&version))
}

fn readiness(app: &App, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let served = app.models.get(name, version)?;
    if !app.ready.load(Ordering::Acquire) {
        return Err(ApiError::unavailable("shutting down"));
    }
    Ok(Json(json!({
        "name": served.info.name,
        "version": served.info.version.to_string(),
        "ready": true,
    }))
    .into_response())
}

async fn model_ready(
    State(app): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    readiness(&app, &name, None)
}

async fn model_ready_at(
    State(app): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    readiness(&app, &name, Some(&version))
}

async fn metrics(State(app): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn infer(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer_model(app, &name, None, headers, body).await
}

async fn infer_at(
    State(app): State<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer_model(app, &name, Some(&version), headers, body).await
}

async fn infer_model(
    app: Shared,
    name: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let served = match app.models.get(name, version) {
        Ok(s) => s.clone(),
        Err(e) => return Err(discard_body(&app, body, e).await),
    };
    let Ok(_permit) = app.permits.clone().try_acquire_owned() else {
        let busy =
            ApiError::unavailable("too many requests in flight (--max-concurrency); try again");
        return Err(discard_body(&app, body, busy).await);
    };
    let timeout = app.limits.request_timeout;
    let result = match tokio::time::timeout(timeout, answer(&app, &served, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} ms (--request-timeout-ms)",
                timeout.as_millis()
            ),
        )),
    };
    match result {
        Ok(_) => served.counters.success.inc(),
        Err(_) => served.counters.failure.inc(),
    }
    result
}

/// `error`, once the body it answers has been read and dropped (as [`read_body`] bounds it, within
/// the request timeout): a client still sending its body then reads the answer, and its
/// connection stays open, instead of a broken pipe.
async fn discard_body(app: &App, body: Body, error: ApiError) -> ApiError {
    let limit = app.limits.max_body_bytes;
    let _ = tokio::time::timeout(app.limits.request_timeout, read_body(body, limit)).await;
    error
}

async fn answer(
    app: &App,
    served: &Served,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let arrival = served.batcher.arrival();
    let limit = app.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes (--max-body-bytes)"),
        )
    };
    let bytes = read_body(body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => too_large(),
        BodyError::Read(e) => ApiError::bad_request(format!("reading the request body: {e}")),
    })?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Inference-Header-Content-Length is not a byte count")
                })?,
        ),
    };
    let mut req = parse_request(&bytes, header_len, &served.info)?;
    drop(bytes);
    let n = req.n;
    let out = served
        .batcher
        .infer(std::mem::take(&mut req.images), n, arrival)
        .await?;
    served.counters.images.inc_by(n as u64);
    let encoded = encode_response(&served.info, &req, &out);
    let mut resp = Response::new(Body::from(encoded.body));
    let h = resp.headers_mut();
    match encoded.header_len {
        Some(len) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(len));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(resp)
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// The body, if at most `limit` bytes. A larger one is read on and dropped up to a bound
/// (`limit` again, at least 8 MiB) so that the client, still sending, reads the 413 rather than
/// a reset connection; past that bound the connection is closed.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    let mut dropped = 0usize;
    let drain = limit.max(8 << 20);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if dropped > 0 || out.len() + data.len() > limit {
            dropped += data.len();
            out = Vec::new();
            if dropped > drain {
                break;
            }
        } else {
            out.extend_from_slice(&data);
        }
    }
    if dropped > 0 {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

/// Serves `models` on `listener` until `shutdown` completes, then stops accepting, answers the
/// requests in flight (for at most `limits.shutdown_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    models: ModelSet,
    metrics: Metrics,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = Arc::new(App {
        models,
        metrics,
        permits: Arc::new(Semaphore::new(limits.max_concurrency.max(1))),
        limits: limits.clone(),
        ready: AtomicBool::new(true),
    });
    let service = router(app.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let builder = builder.http1_only();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    app.ready.store(false, Ordering::Release);
    drop(listener);
    tracing::info!("shutting down: answering the requests in flight");
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} ms (--shutdown-timeout-ms); closing them",
            limits.shutdown_timeout.as_millis()
        );
    }
    Ok(())
}
