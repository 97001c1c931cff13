//! Human sizes: `8G`, `512M`, `4GiB`, `1.5G`; a bare number means MiB.

/// A size string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid size {0:?}: use a number with a unit, e.g. 512M, 8G or 4GiB (a bare number means MiB)"
)]
pub struct SizeError(pub String);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Parses a size into bytes. Units are binary (K = KiB).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError(input.to_string());
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    let upper = s.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| {
            upper
                .strip_suffix('B')
                .filter(|b| b.ends_with(['K', 'M', 'G', 'T']))
        })
        .unwrap_or(&upper);
    let (num, mult) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], KIB),
        Some('M') => (&body[..body.len() - 1], MIB),
        Some('G') => (&body[..body.len() - 1], GIB),
        Some('T') => (&body[..body.len() - 1], TIB),
        Some(c) if c.is_ascii_digit() => (body, MIB),
        _ => return Err(err()),
    };
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (u64::MAX / 2) as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes compactly: `8G`, `512M`, `1.5G`, `100K`, `17B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes >= mult {
            let v = bytes as f64 / mult as f64;
            return if bytes.is_multiple_of(mult) {
                format!("{}{unit}", bytes / mult)
            } else {
                let s = format!("{v:.1}");
                format!("{}{unit}", s.trim_end_matches(".0"))
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok: &[(&str, u64)] = &[
            ("8G", 8 * GIB),
            ("8g", 8 * GIB),
            ("4GiB", 4 * GIB),
            ("4GB", 4 * GIB),
            ("512M", 512 * MIB),
            ("512MiB", 512 * MIB),
            ("4KiB", 4 * KIB),
            ("1T", TIB),
            ("1.5G", 3 * GIB / 2),
            ("1024", 1024 * MIB),
            (" 2G ", 2 * GIB),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for bad in [
            "", "G", "abc", "-1G", "1X", "0", "0G", "1..2G", "GiB", "1 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["8G", "512M", "1.5G", "100K", "1T"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
        assert_eq!(format_size(17), "17B");
    }
}
