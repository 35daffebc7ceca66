//! Why the verifier refused a program, from its log.
//!
//! A verifier log opens with notes about the program's arguments (on 5.10, a tp_btf program's
//! log starts `arg#0 type is not a struct`, which is harmless), then walks the instructions
//! with register states, and ends with statistics. What made it give up is the last thing it
//! said before the statistics: that is the reason to show.

/// The most lines of the final message kept: some messages take two lines (an access and
/// the range it broke), none that helps a reader takes more.
const MAX_REASON_LINES: usize = 2;

/// The verifier's reason for a refusal: the last run of message lines, without instruction
/// dumps, register states, source-line comments and statistics. `None` when the log holds
/// no message (an empty log, or one of statistics only).
pub fn reason(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .trim_end_matches('\0')
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && !is_statistics(line))
        .collect();
    let end = lines.iter().rposition(|line| is_message(line))? + 1;
    let start = lines[..end]
        .iter()
        .rposition(|line| !is_message(line))
        .map_or(0, |i| i + 1)
        .max(end.saturating_sub(MAX_REASON_LINES));
    Some(lines[start..end].join("; "))
}

/// The summary the verifier prints after its verdict (log level STATS), and loaders' frames.
fn is_statistics(line: &str) -> bool {
    [
        "processed ",
        "verification time ",
        "stack depth ",
        "-- BEGIN PROG LOAD LOG --",
        "-- END PROG LOAD LOG --",
    ]
    .iter()
    .any(|prefix| line.starts_with(prefix))
}

/// Whether a line is something the verifier said, not a trace of what it walked: an
/// instruction (`12: (85) call ...`, `12: R1=ctx()`), a source line (`; return 0;`), register
/// states (`R1=ctx() R10=fp0`, `R0_w=0`), a branch (`from 4 to 7: ...`), a function header
/// (`func#0 @0`), precision backtracking, or an indented live-registers dump.
fn is_message(line: &str) -> bool {
    if line.starts_with(char::is_whitespace) || line.starts_with(';') {
        return false;
    }
    let instruction = line
        .split_once(": ")
        .is_some_and(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
    let register_state = line
        .strip_prefix('R')
        .and_then(|rest| rest.split_once('='))
        .is_some_and(|(reg, _)| {
            let digits = reg.trim_end_matches(|c: char| c == '_' || c.is_ascii_lowercase());
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        });
    let walk = [
        "from ",
        "func#",
        "mark_precise: ",
        "last_idx ",
        "regs=",
        "parent ",
        "Live regs before insn:",
        "Validating ",
        "caller:",
        "callee:",
    ]
    .iter()
    .any(|prefix| line.starts_with(prefix));
    !(instruction || register_state || walk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcp_state` (tp_btf) refused by Debian 11's 5.10 kernel: tp_btf programs gain
    /// bpf_get_socket_cookie in 5.12.
    const COOKIE_ON_5_10: &str = "arg#0 type is not a struct\n\
        Unrecognized arg#0 type PTR\n\
        ; int tcp_state(unsigned long long *ctx)\n\
        0: (79) r6 = *(u64 *)(r1 +8)\n\
        1: (79) r7 = *(u64 *)(r1 +0)\n\
        2: (bf) r1 = r7\n\
        3: (85) call bpf_get_socket_cookie#46\n\
        unknown func bpf_get_socket_cookie#46\n\
        processed 4 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 \
        mark_read 0\n\0";

    #[test]
    fn the_reason_is_the_last_message_not_the_first_note() {
        assert_eq!(
            reason(COOKIE_ON_5_10).as_deref(),
            Some("unknown func bpf_get_socket_cookie#46")
        );
    }

    #[test]
    fn a_message_of_two_lines_is_kept_whole() {
        let log = "func#0 @0\n\
            0: R1=ctx() R10=fp0\n\
            ; return *(u64 *)(v + 8); @ prog.c:12\n\
            7: (79) r0 = *(u64 *)(r0 +8)         ; R0_w=map_value(map=m,ks=4,vs=8)\n\
            invalid access to map value, value_size=8 off=8 size=8\n\
            R0 min value is outside of the allowed memory range\n\
            processed 8 insns (limit 1000000) max_states_per_insn 0 total_states 1 \
            peak_states 1 mark_read 1\n\
            verification time 20 usec\n\
            stack depth 0\n";
        assert_eq!(
            reason(log).as_deref(),
            Some(
                "invalid access to map value, value_size=8 off=8 size=8; R0 min value is \
                 outside of the allowed memory range"
            )
        );
    }

    #[test]
    fn register_complaints_are_messages_register_states_are_not() {
        let log = "from 4 to 7: R0=scalar() R10=fp0\n\
            7: R0=scalar() R10=fp0\n\
            7: (85) call bpf_sk_storage_get#107\n\
            R1 type=scalar expected=map_ptr\n";
        assert_eq!(
            reason(log).as_deref(),
            Some("R1 type=scalar expected=map_ptr")
        );
        assert_eq!(reason("R0_w=0 R10=fp0\n"), None);
    }

    #[test]
    fn a_refusal_before_any_instruction_is_said_in_full() {
        assert_eq!(
            reason("attach_btf_id 4242 is not a function\n").as_deref(),
            Some("attach_btf_id 4242 is not a function")
        );
    }

    #[test]
    fn a_log_without_a_message_has_no_reason() {
        assert_eq!(reason(""), None);
        assert_eq!(reason("\0"), None);
        assert_eq!(
            reason("processed 1 insns (limit 1000000)\nverification time 3 usec\n"),
            None
        );
    }
}
