//! The HTTP endpoint Prometheus scrapes (`--prometheus ADDR`): `GET /metrics`, one request
//! per connection. The pipeline renders the metrics when a connection arrives (so gauges are
//! of that moment); a task per connection reads the request and writes the answer, so a slow
//! client never holds up the event loop.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::error::Fatal;

/// Requests longer than this are refused: a scrape's request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `addr`. An address in use (another exporter, a second port-trace) or not
/// ours to bind is a clear error with its own exit code, before any probe is attached.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, Fatal> {
    let listener = std::net::TcpListener::bind(addr).map_err(|err| {
        let why = match err.kind() {
            std::io::ErrorKind::AddrInUse => "the address is already in use".to_string(),
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this host has that address".to_string()
            }
            _ => err.to_string(),
        };
        Fatal::CannotServe(format!("cannot serve --prometheus on {addr}: {why}"))
    })?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Reads one request from `stream` and answers it with `metrics` (already rendered).
pub async fn answer(mut stream: TcpStream, metrics: String, content_type: &'static str) {
    let mut request = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let reply = response(&request, &metrics, content_type);
    // The client may have gone; there is nobody to tell.
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// The HTTP/1.1 answer to `request` (its head): the metrics for `GET /metrics`, a pointer
/// to them at `/`, and the right error for anything else.
pub fn response(request: &[u8], metrics: &str, content_type: &str) -> Vec<u8> {
    let head = String::from_utf8_lossy(request);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    // Prometheus may add a query string; the path is what matters.
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", content_type, metrics),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "port-trace: Prometheus metrics are at /metrics\n",
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
        ("", _) => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n",
        ),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        reply.extend_from_slice(body.as_bytes());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_body(reply: &[u8]) -> (String, String) {
        let text = String::from_utf8_lossy(reply).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    #[test]
    fn metrics_at_metrics() {
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n";
        let reply = response(request, "a 1\n", "text/plain; version=0.0.4");
        let (status, body) = status_and_body(&reply);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "a 1\n");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("Content-Length: 4\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4\r\n"));
        // A query string does not matter.
        let (status, _) = status_and_body(&response(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", "", ""));
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[test]
    fn head_has_no_body() {
        let (status, body) =
            status_and_body(&response(b"HEAD /metrics HTTP/1.1\r\n\r\n", "a 1\n", ""));
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    }

    #[test]
    fn everything_else_is_an_error() {
        for (request, expected) in [
            (&b"GET /nope HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404 Not Found"),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (b"", "HTTP/1.1 400 Bad Request"),
            (b"\xff\xfe\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        ] {
            let (status, _) = status_and_body(&response(request, "secret", ""));
            assert_eq!(status, expected, "{request:?}");
        }
    }
}
