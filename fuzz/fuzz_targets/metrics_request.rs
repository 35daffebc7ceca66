//! The metrics endpoint's request: whatever a client of `--prometheus` sends, answered by
//! `sinks::metrics_server`: routed by `Route::of`, answered by `response`. The one call
//! below is the seam to repoint if the server's request handling moves.
#![no_main]

use libfuzzer_sys::fuzz_target;

const METRICS: &str =
    "# TYPE port_trace_allocations_total counter\nport_trace_allocations_total 7\n";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn answer(request: &[u8]) -> Vec<u8> {
    use port_trace::sinks::metrics_server::{Route, response};
    response(Route::of(request), METRICS, CONTENT_TYPE)
}

fuzz_target!(|request: &[u8]| {
    let reply = answer(request);
    // Always one well-formed HTTP/1.1 response: a status line, headers, a blank line.
    let text = std::str::from_utf8(&reply).expect("the reply is text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.split(' ').next())
        .expect("an HTTP/1.1 status line");
    assert!(["200", "400", "404", "405"].contains(&code), "{status}");
    let mut length = None;
    for line in lines {
        // Nothing from the request can split or add a header.
        let (name, value) = line.split_once(": ").expect("a header line");
        assert!(
            !name.is_empty() && !value.contains(['\r', '\n']),
            "{line:?}"
        );
        if name.eq_ignore_ascii_case("content-length") {
            assert!(length.is_none(), "two Content-Lengths");
            length = Some(value.parse::<usize>().expect("a number"));
        }
    }
    let length = length.expect("a Content-Length");
    // The whole body, or none for HEAD (whose length is what GET would send).
    if body.len() != length {
        assert!(
            body.is_empty() && contains(request, b"HEAD"),
            "Content-Length {length}, body {body:?}"
        );
    }
    // The metrics go out only to a request for them.
    if body.contains(METRICS) || (body.is_empty() && length == METRICS.len()) {
        assert!(
            contains(request, b"/metrics") && contains(request, b"GET")
                || contains(request, b"HEAD")
        );
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
