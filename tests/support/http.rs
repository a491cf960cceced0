//! Tiny HTTP/1.1 pieces for tests, on std only: an instance that answers with its own name, and a
//! one-shot client that can set the Host header.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// An HTTP server on 127.0.0.1 that answers every path with `200 <name>`, except `/health`,
/// which answers 200 or 503 as set by [`Instance::set_healthy`]. Stops when dropped.
pub struct Instance {
    pub name: String,
    pub port: u16,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicU64>,
}

impl Instance {
    pub fn start(name: &str) -> Instance {
        Self::start_with(name, false)
    }

    /// Like [`Instance::start`], but the body is `<name> <request target>`: the path (and query)
    /// as the server received it, to see what HAProxy rewrote.
    pub fn start_echo(name: &str) -> Instance {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, echo: bool) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind instance");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (h, s, r, n) = (
            healthy.clone(),
            stop.clone(),
            requests.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, r, n) = (h.clone(), r.clone(), n.clone());
                        std::thread::spawn(move || serve(stream, &n, &h, &r, echo));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Instance {
            name: name.to_string(),
            port,
            healthy,
            stop,
            requests,
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, name: &str, healthy: &AtomicBool, requests: &AtomicU64, echo: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = if path == "/health" {
            if healthy.load(Ordering::Relaxed) {
                ("200 OK", "ok".to_string())
            } else {
                ("503 Service Unavailable", "unhealthy".to_string())
            }
        } else {
            requests.fetch_add(1, Ordering::Relaxed);
            if echo {
                ("200 OK", format!("{name} {path}"))
            } else {
                ("200 OK", name.to_string())
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A one-shot `GET` to 127.0.0.1:`port` with the given Host header; returns (status, body).
pub fn get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
