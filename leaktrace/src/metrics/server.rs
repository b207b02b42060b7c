//! The HTTP side of the metrics endpoint: binding `--metrics-addr`, accepting connections
//! under a cap, and answering `GET /metrics` in the format the client asks for. What the metrics
//! are and how they are rendered is the parent module's.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};

use super::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// A slow or idle client may not hold a connection open for longer than this before sending
/// its request headers (each request's, keep-alive ones included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Each holds a file descriptor: without a cap, idle clients can
/// take every descriptor leaktrace may open, and symbolization (which opens the traced
/// programs' files) then fails. A scraper needs one; beyond the cap a new connection is closed
/// at once and counted in `leaktrace_metrics_connections_refused`.
pub const MAX_CONNECTIONS: usize = 64;

/// The running server. Dropping it (or calling `shutdown`) stops accepting and closes the open
/// connections.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The address actually bound (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(self) {}
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops them all.
        self.task.abort();
    }
}

/// Binds `addr` now, so that a taken port is an error the caller can report before tracing
/// starts, then serves `GET /metrics` from a task on the current tokio runtime. The error is
/// the bind error as the OS gave it (kind `AddrInUse`, `PermissionDenied`, ...); the caller
/// names the address and the option.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<ServerHandle, std::io::Error> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, metrics));
    Ok(ServerHandle { local_addr, task })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or a connection reset before accept: back off
                    // briefly instead of spinning, and keep serving.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next() => continue,
        };
        // Finished connections not reaped yet would count against the cap.
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            // Accepted only to be closed: left in the backlog it would be served later, after
            // its client gave up, and the backlog would keep growing.
            drop(stream);
            if metrics.connections_refused.inc() == 0 {
                eprintln!(
                    "leaktrace: warning: metrics endpoint: {MAX_CONNECTIONS} connections open; \
                     refusing more until some close (counted in \
                     leaktrace_metrics_connections_refused_total)"
                );
            }
            continue;
        }
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            // A client that misbehaves only loses its own connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let wants_openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") if wants_openmetrics => (
            StatusCode::OK,
            OPENMETRICS_CONTENT_TYPE,
            metrics.render_openmetrics(),
        ),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, TEXT_CONTENT_TYPE, metrics.render_text())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: leaktrace serves GET /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;

    /// One HTTP/1.0 request over a plain socket, as a scraper without keep-alive sends it.
    async fn get(addr: SocketAddr, path: &str, headers: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_and_404() {
        let m = Arc::new(Metrics::default());
        m.update(&[sample(42, "leaky", 100, 2, 1)], 0);
        let server = serve("127.0.0.1:0".parse().unwrap(), m.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        // Prometheus asks for OpenMetrics and gets it.
        let accept =
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
        let resp = get(addr, "/metrics", accept).await;
        assert!(
            resp.starts_with("HTTP/1.0 200 OK\r\n") || resp.starts_with("HTTP/1.1 200 OK\r\n"),
            "{resp}"
        );
        let content_type = |ct: &str| format!("content-type: {ct}\r\n");
        assert!(
            resp.to_ascii_lowercase()
                .contains(&content_type(OPENMETRICS_CONTENT_TYPE)),
            "{resp}"
        );
        assert!(
            resp.contains("leaktrace_outstanding_bytes{pid=\"42\",comm=\"leaky\"} 100\n"),
            "{resp}"
        );
        assert!(resp.ends_with("# EOF\n"));
        // Anyone else gets the 0.0.4 text format.
        let resp = get(addr, "/metrics", "").await;
        assert!(
            resp.to_ascii_lowercase()
                .contains(&content_type(TEXT_CONTENT_TYPE)),
            "{resp}"
        );
        assert!(
            resp.contains("\n# TYPE leaktrace_allocations_total counter\n"),
            "{resp}"
        );
        assert!(!resp.contains("# EOF"));
        // Values are read at scrape time.
        m.update(&[sample(42, "leaky", 200, 3, 1)], 0);
        assert!(
            get(addr, "/metrics", "")
                .await
                .contains("comm=\"leaky\"} 200\n")
        );
        let resp = get(addr, "/", "").await;
        assert!(resp.contains(" 404 Not Found\r\n"), "{resp}");

        // The port is taken while the server runs: bind fails now.
        let e = serve(addr, m.clone()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");

        // Stopped: the port is free again.
        server.shutdown();
        tokio::task::yield_now().await;
        let again = serve(addr, m).await.unwrap();
        assert_eq!(again.local_addr(), addr);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_beyond_the_cap_are_closed_and_counted() {
        let m = Arc::new(Metrics::default());
        let server = serve("127.0.0.1:0".parse().unwrap(), m.clone()).await.unwrap();
        let addr = server.local_addr();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 3 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The server task runs when this one waits: wait for the count, with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while m.connections_refused() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(m.connections_refused(), 3);
        assert!(m.render_text().contains("leaktrace_metrics_connections_refused_total 3\n"));
        // Once the idle ones are gone, a scraper is served again.
        drop(idle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // A refused connection may be reset rather than answered: try again then.
            let resp = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).await.ok()?;
                Some(out)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            if resp.contains(" 200 OK") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never served again: {resp}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

