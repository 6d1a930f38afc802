//! The metrics port: `GET /metrics` (Prometheus text format) and `GET /health`.
//!
//! Plain HTTP/1.1 through hyper, on its own TCP port so that scraping never competes
//! with the QUIC service for a stream. Each connection is bounded: a client gets
//! [`HEADER_TIMEOUT`] to send its request head, and connections end with the service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use strata_proto::{Error, ErrorCode, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Health, Metrics};
use strata_engine::Store;

/// How long a connection has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The Prometheus text exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound metrics port, not yet serving.
pub(crate) struct MetricsEndpoint {
    listener: TcpListener,
}

/// What answering a request needs.
struct Context {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    health: Arc<Health>,
}

impl MetricsEndpoint {
    /// Binds `addr`. Call inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> Result<MetricsEndpoint> {
        let refused = |e: std::io::Error| {
            let msg = format!("cannot serve metrics on {addr}: {e}");
            Error::new(ErrorCode::Unavailable, msg)
        };
        let std_listener = std::net::TcpListener::bind(addr).map_err(refused)?;
        std_listener.set_nonblocking(true).map_err(refused)?;
        let listener = TcpListener::from_std(std_listener).map_err(refused)?;
        Ok(MetricsEndpoint { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Answers requests until `stop` turns true; open connections end then too.
    pub async fn serve(
        self,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
        health: Arc<Health>,
        mut stop: watch::Receiver<bool>,
    ) {
        let context = Arc::new(Context {
            metrics,
            store,
            health,
        });
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let context = Arc::clone(&context);
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = respond(&context, &req);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = stop.changed() => {}
                }
            });
        }
    }
}

fn respond(context: &Context, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" | "/health" if !readable => {
            let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
            answer
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            answer
        }
        "/metrics" => {
            let body = context.metrics.render(&context.store);
            let mut answer = text(StatusCode::OK, body);
            answer
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            answer
        }
        "/health" if context.health.serving() => text(StatusCode::OK, "ok\n".into()),
        "/health" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this port serves /metrics and /health\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}
