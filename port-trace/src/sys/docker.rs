//! The Docker Engine API on its unix socket, for the one thing it tells that a cgroup path
//! does not: a container's name. Never required: where there is no socket, or it does not
//! answer within a short timeout, the name is simply unknown.

use std::{
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// How long one question may take: it is asked on the event path, once per container.
const TIMEOUT: Duration = Duration::from_millis(250);

/// The most of an answer read (an inspect is a few kB; a runaway peer is not read on).
const MAX_ANSWER: u64 = 1 << 20;

/// The Docker socket under a host root.
pub fn socket(host_root: &Path) -> PathBuf {
    host_root.join("var/run/docker.sock")
}

/// Why a name could not be had.
#[derive(Debug)]
pub enum AskError {
    /// Nothing answers on the socket (absent, refused, timed out, not HTTP): ask again later.
    NoDaemon(io::Error),
    /// The daemon answered, but has no such container (or no name for it).
    NoSuchContainer,
}

/// The name of container `id` (`web`, without Docker's leading `/`), by
/// `GET /containers/<id>/json`.
pub fn container_name(socket: &Path, id: &str) -> Result<String, AskError> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AskError::NoSuchContainer);
    }
    let answer = ask(socket, &format!("/containers/{id}/json")).map_err(AskError::NoDaemon)?;
    let (status, body) = split_answer(&answer).ok_or_else(|| {
        AskError::NoDaemon(io::Error::new(io::ErrorKind::InvalidData, "not HTTP"))
    })?;
    if status != 200 {
        return Err(AskError::NoSuchContainer);
    }
    name_in(body).ok_or(AskError::NoSuchContainer)
}

/// One HTTP/1.0 GET (the daemon closes the connection after answering).
fn ask(socket: &Path, path: &str) -> io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    Ok(answer)
}

/// (status, body) of an HTTP answer.
fn split_answer(answer: &[u8]) -> Option<(u16, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, &answer[end + 4..]))
}

fn name_in(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Inspect {
        #[serde(rename = "Name")]
        name: String,
    }
    let inspect: Inspect = serde_json::from_slice(body).ok()?;
    let name = inspect.name.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
pub mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn reads_the_name_from_an_inspect_answer() {
        let answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"3f2a\",\"Name\":\"/web\",\"State\":{}}";
        let (status, body) = split_answer(answer).expect("HTTP");
        assert_eq!(status, 200);
        assert_eq!(name_in(body).as_deref(), Some("web"));
        assert_eq!(split_answer(b"garbage"), None);
        assert_eq!(name_in(b"{}"), None);
    }

    /// A fake daemon on a real unix socket at `path`: it answers `requests` requests, naming
    /// the container whose id the request has (`known`: (id, name)), 404 for any other.
    pub fn fake_daemon(
        path: &Path,
        requests: usize,
        known: (&'static str, &'static str),
    ) -> std::thread::JoinHandle<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            for _ in 0..requests {
                let (mut conn, _) = listener.accept().expect("accept");
                let mut request = [0u8; 512];
                let n = conn.read(&mut request).expect("read");
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                let wanted = format!("GET /containers/{}/json HTTP/1.0", known.0);
                let answer = if request.starts_with(&wanted) {
                    format!("HTTP/1.0 200 OK\r\n\r\n{{\"Name\":\"/{}\"}}", known.1)
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}".into()
                };
                conn.write_all(answer.as_bytes()).expect("write");
            }
        })
    }

    /// A fake daemon on a real unix socket: a known container, an unknown one, and no daemon.
    #[test]
    fn asks_a_daemon_on_its_socket() {
        let dir = std::env::temp_dir().join(format!("port-trace-docker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("docker.sock");
        let server = fake_daemon(&path, 2, ("abc", "web"));
        assert_eq!(container_name(&path, "abc").ok().as_deref(), Some("web"));
        assert!(matches!(
            container_name(&path, "def"),
            Err(AskError::NoSuchContainer)
        ));
        server.join().expect("server");
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(
            container_name(&path, "abc"),
            Err(AskError::NoDaemon(_))
        ));
        assert!(matches!(
            container_name(&path, "../x"),
            Err(AskError::NoSuchContainer)
        ));
    }
}
