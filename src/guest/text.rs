//! Text a guest wrote, made fit for the owner's terminal: a guest is
//! hostile, and its strings reach error messages, `vm health`, `vm ports`
//! and workspace failures. Control characters (escape sequences that move
//! the cursor, rewrite the title or the clipboard), C1 controls and
//! bidirectional overrides become `?`; the length is bounded in characters
//! (never sliced by bytes).

/// `s` with every character a terminal would act on replaced by `?` (new
/// lines and tabs are kept when `lines`), at most `max` characters, `…`
/// marking a cut.
pub fn shown(s: &str, max: usize, lines: bool) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        let keep = (lines && (c == '\n' || c == '\t')) || !(c.is_control() || is_bidi(c));
        out.push(if keep { c } else { '?' });
    }
    out
}

/// Unicode's explicit direction controls (a "Trojan Source" rewrite of
/// what the reader sees).
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_overrides_and_bounds_by_characters() {
        assert_eq!(shown("ok\x1b]0;pwned\x07\r", 100, false), "ok?]0;pwned??");
        assert_eq!(shown("a\u{9b}31mb", 100, false), "a?31mb", "C1 CSI");
        assert_eq!(shown("x\u{202e}gnp.exe", 100, false), "x?gnp.exe");
        assert_eq!(shown("l1\nl2\tend\x1b", 100, true), "l1\nl2\tend?");
        assert_eq!(shown("l1\nl2", 100, false), "l1?l2");
        // Multi-byte characters are never cut in half.
        assert_eq!(shown("ééééé", 3, false), "ééé…");
        assert_eq!(shown("", 3, false), "");
    }
}
