//! A tiny HTTP responder for Prometheus: `GET /metrics` on a local TCP port, one
//! request per connection, each connection on its own short-lived thread (at most
//! [`MAX_CONNECTIONS`]) with one deadline for the whole exchange, so a slow client
//! can neither hold up the kubelet's probes nor the agent's shutdown. The rendering
//! closure is the caller's, so the agent can add its own gauges next to the
//! workers' counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed unanswered (a probe retries).
const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request and take the answer, in all.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

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
        let active = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("hw-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    // A slow or broken client only costs its own connection and
                    // thread; nothing waits for it.
                    let Some(slot) = Slot::take(&active) else {
                        continue;
                    };
                    let (render, ready) = (render.clone(), ready.clone());
                    let _ = std::thread::Builder::new()
                        .name("hw-metrics-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            let _ = serve(stream, &render, &ready);
                        });
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

/// One of the [`MAX_CONNECTIONS`] connection threads; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Slot> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What is left of `deadline`, or a timeout error once it has passed.
fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
}

fn serve(mut stream: TcpStream, render: &Render, ready: &Ready) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
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
    stream.set_write_timeout(Some(remaining(deadline)?))?;
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

    /// A client sending a byte now and then, until told to stop.
    fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let mut s = TcpStream::connect(addr).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }

    #[test]
    fn a_trickling_client_holds_up_neither_the_probes_nor_the_stop() {
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &mut String| {}),
        )
        .unwrap();
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let slow = trickle(addr, stop.clone());
        // Generous bounds: they only catch a server that waits for the trickle.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(get(addr, "/healthz")).unwrap());
        let resp = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("/healthz waited behind the trickling client");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let slow2 = trickle(addr, stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("stopping the server waited for the trickling client");
        stop.store(true, Ordering::Relaxed);
        slow.join().unwrap();
        slow2.join().unwrap();
    }
}
