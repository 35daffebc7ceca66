//! The HTTP endpoint Prometheus scrapes (`--prometheus ADDR`): `GET /metrics`, one request
//! per connection, and `GET /healthz` for liveness and readiness probes.
//!
//! A task per connection reads the request (bounded in size and time), so a slow client
//! never holds up the event loop. Only a request for the metrics asks the loop for the page
//! (`Exporter::render_due`), and the loop renders at most once per `MIN_RENDER_INTERVAL`,
//! sharing one page among every scraper waiting then: a page is never older than the
//! request it answers, and a flood of scrapers costs one render per interval, not one per
//! connection. Connections are capped (`MAX_CONNECTIONS`): at the cap, the oldest one that
//! is not waiting for the page makes room, or the new one is closed at once, so idle
//! connections can hold neither memory nor file descriptors. Failing accepts (out of file
//! descriptors) back off instead of spinning, with a rate-limited warning.
//!
//! `/healthz` answers "ok" from the connection's task without asking for a page: cheap,
//! and still a proof of life, since connections are accepted only by the trace loop (in
//! `render_due`, on a single-threaded runtime): a loop that is stuck or gone accepts
//! nothing, and the probe times out.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::AbortHandle,
    time::Instant,
};
use tracing::warn;

use crate::error::Fatal;

/// Requests longer than this are refused: a scrape's request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped. Prometheus sends it as soon
/// as it is connected; this leaves room for a slow network, not for an idle client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that has not taken the answer by then is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Prometheus makes one per scrape; more than a few at a time
/// is a misconfiguration or an attack, and each costs a file descriptor.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection younger than this is not closed to make room: its request may be on its way.
const EVICT_AFTER: Duration = Duration::from_secs(1);
/// The page is rendered at most this often; scrapers that ask sooner wait for the next one.
pub const MIN_RENDER_INTERVAL: Duration = Duration::from_secs(1);
/// Back-off after a failed accept: from the first to the last, doubling.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// At most one warning about failing accepts this often.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// A rendered metrics page, shared by every scraper that asked for it.
pub type Page = Arc<str>;

/// How a connection's task asks the event loop for the page.
type PageRequest = oneshot::Sender<Page>;

/// The metrics endpoint: its listener, its connections and the scrapers waiting for a page.
pub struct Exporter {
    listener: TcpListener,
    content_type: &'static str,
    /// Where connection tasks send their page requests, and where the loop reads them.
    requests_tx: mpsc::Sender<PageRequest>,
    requests: mpsc::Receiver<PageRequest>,
    /// Scrapers waiting for the next page.
    waiting: Vec<PageRequest>,
    last_render: Option<Instant>,
    /// Live connections, oldest first.
    connections: VecDeque<Connection>,
    /// Connections closed unanswered because of the cap.
    refused: u64,
    /// No accept before then (after a failed one).
    accept_after: Option<Instant>,
    backoff: Backoff,
    accept_log: RateLimitedLog,
}

/// One connection's task, as the exporter sees it.
struct Connection {
    task: AbortHandle,
    accepted: Instant,
    /// Set while the request has been read and the page not yet handed over: such a
    /// connection is a scraper, never closed to make room.
    awaiting_page: Arc<AtomicBool>,
}

/// Listens on `addr`. An address in use (another exporter, a second port-trace) or not
/// ours to bind is a clear error with its own exit code, before any probe is attached.
pub fn listen(addr: SocketAddr) -> Result<Exporter, Fatal> {
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
    Ok(Exporter::new(TcpListener::from_std(listener)?))
}

impl Exporter {
    fn new(listener: TcpListener) -> Self {
        let (requests_tx, requests) = mpsc::channel(MAX_CONNECTIONS);
        Exporter {
            listener,
            content_type: crate::sinks::prometheus::CONTENT_TYPE,
            requests_tx,
            requests,
            waiting: Vec::new(),
            last_render: None,
            connections: VecDeque::new(),
            refused: 0,
            accept_after: None,
            backoff: Backoff::new(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1),
            accept_log: RateLimitedLog::new(ACCEPT_WARNING_EVERY),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections closed unanswered because of the connection cap, since the start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Serves connections until a scraper waits for the page and it may be rendered; then
    /// the caller renders it and hands it to `answer`. Cancel-safe: what was accepted and
    /// asked for is kept in `self`.
    pub async fn render_due(&mut self) {
        loop {
            // Scrapers that hung up need no page.
            self.waiting.retain(|scraper| !scraper.is_closed());
            let render_at = match self.last_render {
                Some(last) => last + MIN_RENDER_INTERVAL,
                None => Instant::now(),
            };
            let accept_at = self.accept_after.unwrap_or_else(Instant::now);
            let accepting = self.accept_after.is_none();
            tokio::select! {
                // Page requests first: a scraper that has waited is served before the next
                // connection is taken.
                biased;
                Some(scraper) = self.requests.recv() => self.waiting.push(scraper),
                _ = tokio::time::sleep_until(render_at), if !self.waiting.is_empty() => {
                    // Everyone who asked by now shares this page.
                    while let Ok(scraper) = self.requests.try_recv() {
                        self.waiting.push(scraper);
                    }
                    return;
                }
                _ = tokio::time::sleep_until(accept_at), if !accepting => self.accept_after = None,
                accepted = self.listener.accept(), if accepting => self.accepted(accepted),
            }
        }
    }

    /// Hands `page` to every scraper waiting for it.
    pub fn answer(&mut self, page: String) {
        self.last_render = Some(Instant::now());
        let page: Page = page.into();
        for scraper in self.waiting.drain(..) {
            // The scraper may have gone; there is nobody to tell.
            let _ = scraper.send(Arc::clone(&page));
        }
    }

    fn accepted(&mut self, accepted: std::io::Result<(TcpStream, SocketAddr)>) {
        let now = Instant::now();
        let stream = match accepted {
            Ok((stream, _)) => {
                self.backoff.succeed();
                if let Some(suppressed) = self.accept_log.resume(now.into_std()) {
                    warn!(
                        "accepting metrics connections again; {suppressed} failures were not shown"
                    );
                }
                stream
            }
            // Out of file descriptors and the like: the connection waits in the backlog,
            // so accepting again at once would fail again, at full speed.
            Err(err) => {
                let delay = self.backoff.fail();
                self.accept_after = Some(now + delay);
                if let Some(suppressed) = self.accept_log.note(now.into_std()) {
                    let also = match suppressed {
                        0 => String::new(),
                        n => format!(" ({n} more since the last warning)"),
                    };
                    warn!(
                        "accepting a metrics connection: {err}{also}; retrying in {}",
                        humantime::format_duration(delay)
                    );
                }
                return;
            }
        };
        self.connections.retain(|c| !c.task.is_finished());
        if self.connections.len() >= MAX_CONNECTIONS {
            let idle = self.connections.iter().position(|c| {
                !c.awaiting_page.load(Ordering::Relaxed) && now - c.accepted >= EVICT_AFTER
            });
            self.refused += 1;
            match idle {
                // The oldest one not waiting for its page (still sending its request, or
                // not taking the answer) makes room: its socket closes when its task is
                // dropped, on the runtime's next turn.
                Some(index) => {
                    if let Some(old) = self.connections.remove(index) {
                        old.task.abort();
                    }
                }
                // Closed at once, so file descriptors cannot pile up.
                None => {
                    drop(stream);
                    return;
                }
            }
        }
        let awaiting_page = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(serve(
            stream,
            self.requests_tx.clone(),
            Arc::clone(&awaiting_page),
            self.content_type,
        ))
        .abort_handle();
        self.connections.push_back(Connection {
            task,
            accepted: now,
            awaiting_page,
        });
    }
}

/// One connection: reads its request, gets the page from the loop if it asks for the
/// metrics, answers, closes.
async fn serve(
    mut stream: TcpStream,
    pages: mpsc::Sender<PageRequest>,
    awaiting_page: Arc<AtomicBool>,
    content_type: &'static str,
) {
    let Ok(request) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await else {
        return;
    };
    let route = Route::of(&request);
    let page = match route {
        Route::Metrics { .. } => {
            let (tx, rx) = oneshot::channel();
            awaiting_page.store(true, Ordering::Relaxed);
            if pages.send(tx).await.is_err() {
                return;
            }
            let Ok(page) = rx.await else { return };
            awaiting_page.store(false, Ordering::Relaxed);
            Some(page)
        }
        _ => None,
    };
    let reply = response(route, page.as_deref().unwrap_or(""), content_type);
    drop(page);
    // The client may have gone or stopped reading; there is nobody to tell.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
}

/// The request's head, up to the blank line, end of stream or `MAX_REQUEST` bytes.
async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    request
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD /metrics`.
    Metrics {
        head: bool,
    },
    /// `GET` or `HEAD /`: a pointer to /metrics.
    Index {
        head: bool,
    },
    /// `GET` or `HEAD /healthz`: "ok" while the trace loop accepts connections.
    Health {
        head: bool,
    },
    NotFound {
        head: bool,
    },
    BadRequest,
    MethodNotAllowed,
}

impl Route {
    /// The route of `request` (its head).
    pub fn of(request: &[u8]) -> Route {
        let head = String::from_utf8_lossy(request);
        let mut words = head.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        // Prometheus may add a query string; the path is what matters.
        let path = target.split('?').next().unwrap_or("");
        let head = method == "HEAD";
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => Route::Metrics { head },
            ("GET" | "HEAD", "/") => Route::Index { head },
            ("GET" | "HEAD", "/healthz") => Route::Health { head },
            ("GET" | "HEAD", _) => Route::NotFound { head },
            ("", _) => Route::BadRequest,
            _ => Route::MethodNotAllowed,
        }
    }
}

/// The HTTP/1.1 answer for `route`: `metrics` (the page) for `/metrics`, a pointer to them
/// at `/`, "ok" at `/healthz`, and the right error for anything else.
pub fn response(route: Route, metrics: &str, content_type: &str) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body, head) = match route {
        Route::Metrics { head } => ("200 OK", content_type, metrics, head),
        Route::Index { head } => (
            "200 OK",
            TEXT,
            "port-trace: Prometheus metrics are at /metrics\n",
            head,
        ),
        Route::Health { head } => ("200 OK", TEXT, "ok\n", head),
        Route::NotFound { head } => ("404 Not Found", TEXT, "not found\n", head),
        Route::BadRequest => ("400 Bad Request", TEXT, "bad request\n", false),
        Route::MethodNotAllowed => ("405 Method Not Allowed", TEXT, "only GET\n", false),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        reply.extend_from_slice(body.as_bytes());
    }
    reply
}

/// Exponential back-off: `fail` gives the next delay (doubling up to the maximum),
/// `succeed` starts over.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn succeed(&mut self) {
        self.next = self.first;
    }
}

/// One log line per `every` for a repeating failure, saying how many were not shown.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    last_shown: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last_shown: None,
            suppressed: 0,
        }
    }

    /// One more failure at `now`: Some(failures not shown since the last line) when this
    /// one is to be shown, None when it is to be counted only.
    pub fn note(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last_shown {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_shown = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// A success at `now`: Some(failures not shown) when some were and a line may be
    /// shown, so the count reaches the log even when the failures have stopped.
    pub fn resume(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        match self.last_shown {
            Some(last) if now.saturating_duration_since(last) < self.every => None,
            _ => {
                self.last_shown = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
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

    fn answer(request: &[u8], metrics: &str, content_type: &str) -> Vec<u8> {
        response(Route::of(request), metrics, content_type)
    }

    #[test]
    fn metrics_at_metrics() {
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(Route::of(request), Route::Metrics { head: false });
        let reply = answer(request, "a 1\n", "text/plain; version=0.0.4");
        let (status, body) = status_and_body(&reply);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "a 1\n");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("Content-Length: 4\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4\r\n"));
        // A query string does not matter.
        let (status, _) = status_and_body(&answer(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", "", ""));
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[test]
    fn head_has_no_body() {
        let request = b"HEAD /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(Route::of(request), Route::Metrics { head: true });
        let (status, body) = status_and_body(&answer(request, "a 1\n", ""));
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    }

    #[test]
    fn healthz_is_ok_without_the_page() {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.33\r\n\r\n";
        assert_eq!(Route::of(request), Route::Health { head: false });
        let (status, body) = status_and_body(&answer(request, "secret", ""));
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ok\n")
        );
        let request = b"HEAD /healthz HTTP/1.1\r\n\r\n";
        assert_eq!(Route::of(request), Route::Health { head: true });
        let (status, body) = status_and_body(&answer(request, "secret", ""));
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
        // Only that path: a prefix or a longer one is not the probe.
        for other in [
            &b"GET /health HTTP/1.1\r\n\r\n"[..],
            b"GET /healthz/x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(Route::of(other), Route::NotFound { head: false });
        }
    }

    /// The probe is answered while the loop serves connections, and asks it for no render.
    #[tokio::test]
    async fn healthz_needs_no_render() {
        let mut exporter = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("listens");
        let addr = exporter.local_addr().expect("its address");
        let probe = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        });
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                reply = probe => reply,
                _ = exporter.render_due() => panic!("the probe asked for a render"),
            }
        })
        .await
        .expect("the probe is answered")
        .expect("the task")
        .expect("a reply");
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nok\n"), "{reply}");
    }

    #[test]
    fn everything_else_is_an_error_and_needs_no_page() {
        for (request, expected) in [
            (&b"GET /nope HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404 Not Found"),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (b"", "HTTP/1.1 400 Bad Request"),
            (b"\xff\xfe\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        ] {
            assert!(
                !matches!(Route::of(request), Route::Metrics { .. }),
                "{request:?}"
            );
            let (status, body) = status_and_body(&answer(request, "secret", ""));
            assert_eq!(status, expected, "{request:?}");
            assert!(!body.contains("secret"), "{request:?}");
        }
    }

    /// Ten scrapers at once over loopback: every one gets a page, and they cost at most two
    /// renders (the first may go out before every request is in; the rest share the next).
    #[tokio::test]
    async fn concurrent_scrapers_share_renders() {
        let mut exporter = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("listens");
        let addr = exporter.local_addr().expect("its address");
        let scrapers: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply).await?;
                    Ok::<_, std::io::Error>(reply)
                })
            })
            .collect();
        let replies = async {
            let mut replies = Vec::new();
            for scraper in scrapers {
                replies.push(scraper.await.expect("the task").expect("a reply"));
            }
            replies
        };
        tokio::pin!(replies);
        let mut renders = 0;
        let replies = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    replies = &mut replies => break replies,
                    _ = exporter.render_due() => {
                        renders += 1;
                        exporter.answer(format!("render {renders}\n"));
                    }
                }
            }
        })
        .await
        .expect("every scraper is answered");
        assert!((1..=2).contains(&renders), "{renders} renders");
        for reply in replies {
            assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
            assert!(reply.ends_with("render 1\n") || reply.ends_with("render 2\n"));
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.fail()).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        backoff.succeed();
        assert_eq!(backoff.fail(), ms(100));
    }

    #[test]
    fn repeated_failures_log_once_per_window_with_the_count_not_shown() {
        let start = std::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        // The first is shown; the next 99 in the window are counted.
        assert_eq!(log.note(at(0)), Some(0));
        for i in 1..100 {
            assert_eq!(log.note(at(i * 50)), None, "failure {i}");
        }
        // A success inside the window says nothing yet.
        assert_eq!(log.resume(at(6_000)), None);
        // The next line, once the window has passed, carries the count.
        assert_eq!(log.note(at(10_000)), Some(99));
        assert_eq!(log.note(at(10_001)), None);
        // When the failures have stopped, a later success reports what was not shown, once.
        assert_eq!(log.resume(at(25_000)), Some(1));
        assert_eq!(log.resume(at(40_000)), None);
    }
}
