//! Cutting text that goes where a limit applies (condition messages, Event notes, error
//! messages): one helper, so every cut lands on a character boundary and says it was cut the
//! same way.

/// How long a text may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// At most this many characters (a CRD schema's `maxLength` counts characters).
    Chars(usize),
    /// At most this many bytes of UTF-8 (an Event's note is limited in bytes).
    Bytes(usize),
}

/// `text` within `limit`, cut at a character boundary; `marker` (such as `"..."`) is appended
/// after a cut, beyond the limit.
pub fn truncate(mut text: String, limit: Limit, marker: &str) -> String {
    let end = match limit {
        Limit::Chars(max) => text.char_indices().nth(max).map(|(end, _)| end),
        Limit::Bytes(max) => (text.len() > max).then(|| {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            end
        }),
    };
    if let Some(end) = end {
        text.truncate(end);
        text.push_str(marker);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_lands_on_a_character_boundary_and_is_marked() {
        assert_eq!(truncate("abc".into(), Limit::Bytes(3), "..."), "abc");
        assert_eq!(truncate("abcd".into(), Limit::Bytes(3), "..."), "abc...");
        // "é" is two bytes: a cut inside it goes back to the boundary before it.
        assert_eq!(truncate("aéb".into(), Limit::Bytes(2), "..."), "a...");
        assert_eq!(truncate("aéb".into(), Limit::Chars(2), ""), "aé");
        assert_eq!(truncate("aé".into(), Limit::Chars(2), "..."), "aé");
    }
}
