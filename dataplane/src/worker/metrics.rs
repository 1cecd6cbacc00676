//! A tiny HTTP responder for Prometheus: `GET /metrics` on a local TCP port, one
//! thread, one request per connection. The rendering closure is the caller's, so
//! the agent can add its own gauges next to the workers' counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Renders the exposition text.
pub type Render = Arc<dyn Fn(&mut String) + Send + Sync>;
/// Answers `/readyz`: true when the process can do its job.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// The running endpoint; dropping it stops the thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves on a thread named `hw-metrics`; `/readyz` is always ok.
    pub fn start(addr: SocketAddr, render: Render) -> std::io::Result<Self> {
        Self::start_with_readiness(addr, render, Arc::new(|| true))
    }

    /// Like [`MetricsServer::start`], with `/healthz` (200 while the thread answers)
    /// and `/readyz` (200 when `ready` says so, else 503) for Kubernetes probes.
    pub fn start_with_readiness(
        addr: SocketAddr,
        render: Render,
        ready: Ready,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hw-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        // A slow or broken client only costs its own connection.
                        let _ = serve(stream, &render, &ready);
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, render: &Render, ready: &Ready) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = req.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics" | "/") => {
            let mut body = String::with_capacity(16 * 1024);
            render(&mut body);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if ready() => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try GET /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_over_real_tcp() {
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|out: &mut String| out.push_str("hybridway_up 1\n")),
        )
        .unwrap();
        let resp = get(server.local_addr(), "/metrics");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nhybridway_up 1\n"), "{resp}");
        assert!(get(server.local_addr(), "/nope").starts_with("HTTP/1.1 404"));
        assert!(get(server.local_addr(), "/readyz").starts_with("HTTP/1.1 200"));
        drop(server);
    }

    #[test]
    fn probes_answer_readiness() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let server = MetricsServer::start_with_readiness(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &mut String| {}),
            Arc::new(move || r.load(Ordering::Relaxed)),
        )
        .unwrap();
        assert!(get(server.local_addr(), "/healthz").starts_with("HTTP/1.1 200"));
        assert!(get(server.local_addr(), "/readyz").starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(server.local_addr(), "/readyz").starts_with("HTTP/1.1 200"));
    }
}
