//! What the world says about a port number: IANA's ranges (RFC 6335) and assignments (the
//! registry embedded from data/iana-service-ports.tsv), and the host's /etc/services.

use serde::Serialize;

static IANA: &str = include_str!("../../data/iana-service-ports.tsv");

/// RFC 6335's three ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IanaRange {
    pub name: &'static str,
    pub low: u16,
    pub high: u16,
}

pub fn iana_range(port: u16) -> IanaRange {
    match port {
        0..=1023 => IanaRange {
            name: "system (well-known)",
            low: 0,
            high: 1023,
        },
        1024..=49151 => IanaRange {
            name: "user (registered)",
            low: 1024,
            high: 49151,
        },
        _ => IanaRange {
            name: "dynamic (private)",
            low: 49152,
            high: 65535,
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub proto: String,
    /// Empty for ports IANA lists as Reserved.
    pub service: String,
    pub description: String,
}

/// IANA's assignments for `port` (every protocol), in registry order.
pub fn iana_assignments(port: u16) -> Vec<Assignment> {
    assignments_in(IANA, port)
}

fn assignments_in(table: &str, port: u16) -> Vec<Assignment> {
    let wanted = port.to_string();
    table
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split('\t');
            if fields.next()? != wanted {
                return None;
            }
            Some(Assignment {
                proto: fields.next()?.to_string(),
                service: fields.next().unwrap_or_default().to_string(),
                description: fields.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// `/etc/services` entries for `port`: (service, proto).
pub fn etc_services(text: &str, port: u16) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let mut fields = line.split_whitespace();
            let service = fields.next()?;
            let (number, proto) = fields.next()?.split_once('/')?;
            (number.parse::<u16>().ok()? == port).then(|| (service.to_string(), proto.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_6335() {
        assert_eq!(iana_range(0).name, "system (well-known)");
        assert_eq!(iana_range(1023).high, 1023);
        assert_eq!(iana_range(1024).name, "user (registered)");
        assert_eq!(iana_range(49151).name, "user (registered)");
        assert_eq!(iana_range(49152).name, "dynamic (private)");
        assert_eq!(iana_range(60068).low, 49152);
        assert_eq!(iana_range(65535).high, 65535);
    }

    #[test]
    fn the_embedded_registry_knows_https_and_not_60068() {
        let https = iana_assignments(443);
        assert!(
            https
                .iter()
                .any(|a| a.proto == "tcp" && a.service == "https"),
            "{https:?}"
        );
        assert!(iana_assignments(60068).is_empty());
        // Reserved rows have no service name.
        assert!(iana_assignments(0).iter().all(|a| a.service.is_empty()));
    }

    #[test]
    fn reads_etc_services() {
        let text = "# comment\nhttps\t\t443/tcp\t\t\t# http protocol over TLS/SSL\n\
                    https\t\t443/udp\nbogus line\nhttp 80/tcp www\n";
        assert_eq!(
            etc_services(text, 443),
            vec![
                ("https".into(), "tcp".into()),
                ("https".into(), "udp".into())
            ]
        );
        assert_eq!(etc_services(text, 80), vec![("http".into(), "tcp".into())]);
        assert!(etc_services(text, 22).is_empty());
    }
}
