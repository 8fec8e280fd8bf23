//! Text from the server made safe for a terminal.
//!
//! Keys, statuses and details come from webhooks, that is from outside. Printed raw, an ANSI
//! escape in a description could clear the screen and draw a fake "settled", and a
//! right-to-left override could make a key read backwards. Human output passes every such
//! value through [`printable`]; `--json` output is escaped by JSON itself.

use std::borrow::Cow;

/// `text` with control characters (C0, DEL, C1) and Unicode bidirectional controls written as
/// `\u{XXXX}` escapes; unchanged (and not copied) when it has none.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_terminal_controls_and_bidi_overrides_only() {
        assert_eq!(printable("settled: ok ção"), "settled: ok ção");
        assert_eq!(
            printable("\u{1b}[2J\u{1b}[Hsettled"),
            "\\u{001b}[2J\\u{001b}[Hsettled"
        );
        assert_eq!(printable("key\u{202e}gnp.exe"), "key\\u{202e}gnp.exe");
        assert_eq!(
            printable("a\r\nb\u{7f}\u{85}"),
            "a\\u{000d}\\u{000a}b\\u{007f}\\u{0085}"
        );
    }
}
