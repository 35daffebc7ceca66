//! `Comm`: a thread's name as the kernel keeps it (`TASK_COMM_LEN`, 16 bytes with the NUL),
//! stored inline. Every event carries one and every stage copies it, so it is `Copy` and
//! costs no allocation.

use std::{borrow::Cow, fmt, fmt::Write as _, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most 16 bytes of UTF-8. Ordered as its text is (the zero padding sorts first).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

/// As one 128-bit word: a comm is hashed several times per event (holders, origins), and
/// the derived hash (a length prefix, the bytes as a slice, then `len`) cost more. Equal
/// comms have equal bytes, so they hash equal.
impl std::hash::Hash for Comm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.bytes));
    }
}

impl Comm {
    /// From the kernel's bytes: up to the first NUL. Bytes that are not UTF-8 (a name is
    /// whatever a process set) become `?`, so the text is always valid.
    pub fn new(raw: &[u8]) -> Self {
        let end = raw
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.len())
            .min(16);
        let mut bytes = [0u8; 16];
        bytes[..end].copy_from_slice(&raw[..end]);
        // Names are nearly always ASCII: check that first, it is cheaper.
        if !bytes[..end].is_ascii() && std::str::from_utf8(&bytes[..end]).is_err() {
            for byte in &mut bytes[..end] {
                if !byte.is_ascii() {
                    *byte = b'?';
                }
            }
        }
        Self {
            bytes,
            len: end as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Valid by construction (`new` replaced anything that was not).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl From<&str> for Comm {
    /// Longer names are cut at 16 bytes, on a character boundary.
    fn from(text: &str) -> Self {
        let mut end = text.len().min(16);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self::new(&text.as_bytes()[..end])
    }
}

impl Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Shown to people, a name is made harmless first (any local user can name its process
/// with escape sequences): see `printable`. `as_str`, JSON and Prometheus keep it exact.
impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&printable(self.as_str()))
    }
}

/// `text` safe for a terminal: control characters (C0, DEL, C1: ESC, BEL, CR, LF, CSI...)
/// and the bidirectional overrides that reorder what is shown become visible escapes
/// (`\x1b`, `\u{202e}`), so a name cannot colour, retitle, split or forge a line. The
/// one home for that: anything a process chose that reaches a terminal goes through here.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            // Writing to a String cannot fail.
            c if c.is_ascii_control() => _ = write!(out, "\\x{:02x}", u32::from(c)),
            c if needs_escape(c) => _ = write!(out, "\\u{{{:x}}}", u32::from(c)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // Controls, and the invisible format characters that reorder or hide text: bidi marks,
    // embeddings, overrides and isolates; zero-width spaces and joiners; line and paragraph
    // separators; the byte-order mark.
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Comm::from(text.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_the_nul_or_all_sixteen() {
        assert_eq!(Comm::new(b"curl\0\0\0junk"), "curl");
        assert_eq!(Comm::new(b"sixteen-bytes-xx"), "sixteen-bytes-xx");
        assert_eq!(Comm::new(b""), "");
    }

    #[test]
    fn never_invalid_text() {
        assert_eq!(Comm::new(b"a\xffb"), "a?b");
        // Cut on a character boundary: 15 ASCII bytes and a 2-byte character.
        assert_eq!(Comm::from("123456789012345é"), "123456789012345");
    }

    #[test]
    fn shown_harmless_kept_exact() {
        let hostile = Comm::new(b"a\x1b]0;pwn\x07\r\n");
        assert_eq!(hostile.to_string(), r"a\x1b]0;pwn\x07\x0d\x0a");
        assert_eq!(format!("{:<6}|", Comm::new(b"\x1b")), r"\x1b  |");
        // C1 controls (CSI as one character) and a right-to-left override.
        assert_eq!(
            Comm::from("x\u{9b}31m\u{202e}").to_string(),
            r"x\u{9b}31m\u{202e}"
        );
        // Exact where the reader escapes for itself.
        assert_eq!(hostile.as_str(), "a\x1b]0;pwn\x07\r\n");
        assert_eq!(
            serde_json::to_string(&hostile).ok().as_deref(),
            Some(r#""a\u001b]0;pwn\u0007\r\n""#)
        );
        assert!(matches!(printable("nginx"), Cow::Borrowed("nginx")));
        // Invisible ones too: a zero-width joiner, a line separator, a byte-order mark.
        assert_eq!(
            printable("a\u{200d}b\u{2028}\u{feff}"),
            r"a\u{200d}b\u{2028}\u{feff}"
        );
    }

    #[test]
    fn ordered_and_shown_as_text() {
        let mut names = [Comm::from("nginx"), Comm::from("curl"), Comm::from("cur")];
        names.sort();
        assert_eq!(names.map(|c| c.to_string()), ["cur", "curl", "nginx"]);
        assert_eq!(format!("{:<6}|", Comm::from("ab")), "ab    |");
        assert_eq!(
            serde_json::to_string(&Comm::from("x\"y")).ok().as_deref(),
            Some(r#""x\"y""#)
        );
    }
}
