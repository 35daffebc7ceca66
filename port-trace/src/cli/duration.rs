//! Durations as people write them on a command line: `30s`, `5m`, `1h30m`, `250ms`, parsed by
//! humantime (so `5min` and `2 hours` work too; note `M` is months, `m` minutes) within
//! today's rules: whole numbers, a unit on every one, longer than zero.

use std::time::Duration;

use humantime::DurationError;

/// Parses a duration with a unit on every number; rejects fractions, signs and zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 30s, 5m or 1h30m".into());
    }
    // humantime takes `1.5s`; a whole number of a smaller unit says the same, unambiguously.
    if let Some(bad) = text.chars().find(|c| !c.is_alphanumeric() && *c != ' ') {
        return Err(format!(
            "`{text}`: unexpected `{bad}`; write whole numbers with units, e.g. 1500ms or 1h30m"
        ));
    }
    // As before humantime: no number beyond 32 bits (a deadline that far is a typo, and
    // would overflow the clock's arithmetic).
    if text
        .split(|c: char| !c.is_ascii_digit())
        .any(|number| !number.is_empty() && number.parse::<u32>().is_err())
    {
        return Err(format!("`{text}`: too long"));
    }
    let duration = humantime::parse_duration(text).map_err(|err| match err {
        DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("`{text}`: missing unit; write e.g. {value}s")
        }
        DurationError::NumberExpected(at) | DurationError::InvalidCharacter(at) => {
            format!(
                "`{text}`: expected a number at `{}`",
                &text[at.min(text.len())..]
            )
        }
        DurationError::UnknownUnit { unit, .. } => {
            format!("`{text}`: unknown unit `{unit}` (use ms, s, m, h, d, or M for months)")
        }
        DurationError::NumberOverflow => format!("`{text}`: too long"),
        other => format!("`{text}`: {other}"),
    })?;
    if duration.is_zero() {
        return Err(format!("`{text}`: must be longer than zero"));
    }
    // A millisecond is the finest unit, as before: a summary every microsecond is a typo.
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "`{text}`: finer than a millisecond; the smallest unit is ms"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_what_is_ambiguous_or_wrong() {
        for bad in [
            "",
            "30",
            "s",
            "5x",
            "-5s",
            "1.5s",
            "0s",
            "99999999999h",
            "5m3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected a number at `soon`")
        );
    }

    #[test]
    fn takes_humantime_spellings_and_months_are_capital_m() {
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2 hours"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("1M").expect("a month") > Duration::from_secs(86_400 * 28));
        for too_fine in ["1ns", "500us", "1s1us"] {
            assert!(
                parse_duration(too_fine)
                    .unwrap_err()
                    .contains("finer than a millisecond"),
                "{too_fine}"
            );
        }
    }
}
