//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the daemon resolves the few offsets the
//! programs need at load time and hands them over as `KernelOffsets`. Only what that needs is
//! parsed: struct/union members and the modifiers between a member and its struct type.

use std::collections::HashMap;

use port_trace_common::KernelOffsets;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated")]
    Truncated,
    #[error("BTF type kind {0} is unknown to port-trace")]
    UnknownKind(u32),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {path}")]
    NoMember { path: String },
    #[error("{path} is a bitfield, not a byte-addressable member")]
    Bitfield { path: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
/// How deep anonymous structs and unions may nest (Linux's nest two or three deep).
const MAX_NESTING: usize = 32;
/// How many members one lookup may look at (the largest struct read, `task_struct`, has a
/// few hundred).
const MEMBER_BUDGET: usize = 1 << 16;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
enum Type {
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: a name or qualifier over `target`.
    Alias {
        target: u32,
    },
    Other,
}

/// The parts of a BTF blob that offset lookups need.
pub struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Truncated)
}

fn string_at(strings: &[u8], at: u32) -> Result<String, BtfError> {
    let tail = strings.get(at as usize..).ok_or(BtfError::Truncated)?;
    let end = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or(BtfError::Truncated)?;
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

impl Btf {
    /// Parses little-endian BTF (what x86_64 and arm64 kernels expose).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Truncated)
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        let mut types = vec![Type::Other];
        let mut structs_by_name = HashMap::new();
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => vlen * 12, // struct, union, datasec, enum64
                6 | 13 => vlen * 8,           // enum, func proto
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw_offset = u32_at(type_data, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
                        } else {
                            (raw_offset, false)
                        };
                        members.push(Member {
                            name: string_at(strings, u32_at(type_data, m)?)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    let name = string_at(strings, name_off)?;
                    if kind == KIND_STRUCT && !name.is_empty() {
                        structs_by_name.entry(name).or_insert(types.len() as u32);
                    }
                    Type::Composite { members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        target: size_or_type,
                    }
                }
                _ => Type::Other,
            };
            types.push(ty);
            at += extra;
        }
        Ok(Self {
            types,
            structs_by_name,
        })
    }

    /// The struct or union a type id stands for, through typedefs and qualifiers.
    fn composite(&self, mut id: u32) -> Option<&[Member]> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Composite { members, .. } => return Some(members),
                Type::Alias { target } => id = *target,
                Type::Other => return None,
            }
        }
        None
    }

    /// Finds `name` among `members`, looking inside anonymous structs and unions the way C
    /// does; returns its bit offset and type. `budget` bounds the members looked at and
    /// `depth` the nesting: C nests a few levels, and corrupt BTF can make a loop (a struct
    /// inside itself) or a tree of anonymous members that would take forever to walk.
    fn find_member(
        &self,
        members: &[Member],
        name: &str,
        depth: usize,
        budget: &mut usize,
    ) -> Option<(u32, u32, bool)> {
        if depth > MAX_NESTING {
            return None;
        }
        for member in members {
            *budget = budget.checked_sub(1)?;
            if member.name == name {
                return Some((member.bit_offset, member.type_id, member.bitfield));
            }
            if member.name.is_empty()
                && let Some(inner) = self.composite(member.type_id)
                && let Some((bits, ty, bitfield)) = self.find_member(inner, name, depth + 1, budget)
            {
                return Some((member.bit_offset.checked_add(bits)?, ty, bitfield));
            }
        }
        None
    }

    /// Byte offset of a member path such as `sock.__sk_common.skc_num`.
    pub fn offset_of(&self, path: &str) -> Result<u32, BtfError> {
        let mut parts = path.split('.');
        let root = parts.next().unwrap_or_default();
        let mut type_id = *self
            .structs_by_name
            .get(root)
            .ok_or_else(|| BtfError::NoStruct(root.to_string()))?;
        let no_member = || BtfError::NoMember {
            path: path.to_string(),
        };
        let mut bits = 0u32;
        let mut budget = MEMBER_BUDGET;
        for part in parts {
            let members = self.composite(type_id).ok_or_else(no_member)?;
            let (offset, member_type, bitfield) = self
                .find_member(members, part, 0, &mut budget)
                .ok_or_else(no_member)?;
            if bitfield {
                return Err(BtfError::Bitfield {
                    path: path.to_string(),
                });
            }
            bits = bits.checked_add(offset).ok_or_else(no_member)?;
            type_id = member_type;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                path: path.to_string(),
            });
        }
        Ok(bits / 8)
    }

    /// Every offset the eBPF programs read.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            sk_num: self.offset_of("sock.__sk_common.skc_num")?,
            sk_dport: self.offset_of("sock.__sk_common.skc_dport")?,
            sk_family: self.offset_of("sock.__sk_common.skc_family")?,
            sk_rcv_saddr: self.offset_of("sock.__sk_common.skc_rcv_saddr")?,
            sk_daddr: self.offset_of("sock.__sk_common.skc_daddr")?,
            sk_v6_rcv_saddr: self.offset_of("sock.__sk_common.skc_v6_rcv_saddr")?,
            sk_v6_daddr: self.offset_of("sock.__sk_common.skc_v6_daddr")?,
            sk_protocol: self.offset_of("sock.sk_protocol")?,
            sk_net: self.offset_of("sock.__sk_common.skc_net")?,
            net_inum: self.offset_of("net.ns.inum")?,
            task_nsproxy: self.offset_of("task_struct.nsproxy")?,
            nsproxy_net_ns: self.offset_of("nsproxy.net_ns")?,
            // Not in BTF: the daemon reads it from tracefs (probes::tracefs).
            syscall_exit_ret: 0,
            socket_sk: self.offset_of("socket.sk")?,
            sk_state: self.offset_of("sock.__sk_common.skc_state")?,
            tcp_cb_flags: self.offset_of("tcp_sock.bpf_sock_ops_cb_flags")?,
            tcp_nulls_pprev: self
                .offset_of("tcp_sock.inet_conn.icsk_inet.sk.__sk_common.skc_nulls_node.pprev")?,
            sk_cookie: self.offset_of("sock.__sk_common.skc_cookie")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, kind, kind_flag, size_or_type, members) entries.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }
        fn push(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        fn int(&mut self, name: &str, size: u32) {
            let n = self.string(name);
            self.push(&[n, 1 << 24, size, size * 8]);
        }
        fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            let n = self.string(name);
            self.push(&[n, (kind << 24) | members.len() as u32, size]);
            for (name, ty, bits) in members {
                let n = self.string(name);
                self.push(&[n, *ty, *bits]);
            }
        }
        fn typedef(&mut self, name: &str, target: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_TYPEDEF << 24, target]);
        }
        fn build(self) -> Vec<u8> {
            let mut out = vec![0x9f, 0xeb, 1, 0];
            for w in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// `struct sock { struct sock_common __sk_common; ...; u16 sk_protocol; }` with the port
    /// inside an anonymous union of an anonymous struct, as in Linux.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("u16", 2); // 1
        b.int("u32", 4); // 2
        b.composite(
            KIND_STRUCT,
            "",
            4,
            &[("skc_dport", 1, 0), ("skc_num", 1, 16)],
        ); // 3
        b.composite(KIND_UNION, "", 4, &[("skc_portpair", 2, 0), ("", 3, 0)]); // 4
        b.composite(
            KIND_STRUCT,
            "sock_common",
            16,
            &[("skc_hash", 2, 0), ("", 4, 96)],
        ); // 5
        b.typedef("sock_common_t", 5); // 6
        b.composite(
            KIND_STRUCT,
            "sock",
            64,
            &[("__sk_common", 6, 0), ("sk_protocol", 1, 256)],
        ); // 7
        b.build()
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(btf.offset_of("sock.__sk_common.skc_num"), Ok(14));
        assert_eq!(btf.offset_of("sock.__sk_common.skc_dport"), Ok(12));
        assert_eq!(btf.offset_of("sock.sk_protocol"), Ok(32));
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(
            btf.offset_of("sock.nope"),
            Err(BtfError::NoMember {
                path: "sock.nope".into()
            })
        );
        assert_eq!(
            btf.offset_of("net.ns"),
            Err(BtfError::NoStruct("net".into()))
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(
            Btf::parse(b"not btf at all, not at all").err(),
            Some(BtfError::BadHeader)
        );
        let mut data = sample();
        data.truncate(data.len() - 10);
        assert_eq!(Btf::parse(&data).err(), Some(BtfError::Truncated));
    }

    /// Found by the btf fuzz target: an anonymous member of its own struct's type sent the
    /// lookup round the loop until the stack overflowed.
    #[test]
    fn a_struct_inside_itself_is_no_member() {
        let mut b = Builder::new();
        b.int("u32", 4); // 1
        b.composite(KIND_STRUCT, "sock", 8, &[("", 2, 0), ("x", 1, 32)]); // 2
        let btf = Btf::parse(&b.build()).expect("parses");
        assert_eq!(
            btf.offset_of("sock.x"),
            Ok(4),
            "a name before the loop is found"
        );
        assert_eq!(
            btf.offset_of("sock.nope"),
            Err(BtfError::NoMember {
                path: "sock.nope".into()
            })
        );
    }

    /// A tree of anonymous members, each level twenty wide and distinct, has 20^depth paths:
    /// the lookup gives up instead of walking them.
    #[test]
    fn a_wide_deep_tree_of_anonymous_members_ends() {
        let mut b = Builder::new();
        b.int("u32", 4); // 1
        let levels = 12;
        for level in 0..levels {
            let inner = if level == 0 { 1 } else { 2 + level - 1 };
            let members: Vec<(&str, u32, u32)> = (0..20).map(|_| ("", inner, 0)).collect();
            b.composite(KIND_STRUCT, "", 4, &members); // 2 + level
        }
        b.composite(KIND_STRUCT, "sock", 4, &[("", 2 + levels - 1, 0)]);
        let btf = Btf::parse(&b.build()).expect("parses");
        let started = std::time::Instant::now();
        assert!(btf.offset_of("sock.nope").is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Offsets that add up past u32 are an error, not an overflow.
    #[test]
    fn offsets_past_u32_are_no_member() {
        let mut b = Builder::new();
        b.int("u32", 4); // 1
        b.composite(KIND_STRUCT, "", 4, &[("x", 1, u32::MAX - 7)]); // 2
        b.composite(
            KIND_STRUCT,
            "sock",
            4,
            &[("", 2, 16), ("y", 2, u32::MAX - 7)],
        ); // 3
        let btf = Btf::parse(&b.build()).expect("parses");
        assert!(btf.offset_of("sock.x").is_err());
        assert!(btf.offset_of("sock.y.x").is_err());
    }

    #[test]
    fn resolves_the_running_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        };
        let offsets = Btf::parse(&data)
            .and_then(|b| b.kernel_offsets())
            .expect("offsets");
        // skc_dport and skc_num share a 32-bit port pair: dport first, then num.
        assert_eq!(offsets.sk_num, offsets.sk_dport + 2);
        assert!(offsets.sk_protocol > offsets.sk_net);
    }
}
