//! Cutting text people read without breaking what they see: every cut is
//! at an extended grapheme cluster boundary (Unicode UAX #29, via the
//! `unicode-segmentation` crate), so a flag, an accented letter written as
//! a base plus combining marks, a keycap or a ZWJ family emoji is kept
//! whole or dropped whole, never halved.
//!
//! Lengths are UTF-8 bytes, the unit of every limit a peer sets (APNS
//! payload and header sizes, IRC's 512-byte lines).

use unicode_segmentation::UnicodeSegmentation;

/// The ellipsis appended where shown text was shortened.
pub const ELLIPSIS: char = '…';

/// The byte offsets where `s` may be cut: the start of every extended
/// grapheme cluster (the first is 0; `s.len()` is not included). Empty for
/// an empty `s`.
pub fn cut_points(s: &str) -> Vec<usize> {
    s.grapheme_indices(true).map(|(i, _)| i).collect()
}

/// `s` cut to at most `max` bytes at a grapheme cluster boundary: the
/// longest such prefix (empty when the first cluster is longer than `max`).
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = 0;
    for (i, g) in s.grapheme_indices(true) {
        if i + g.len() > max {
            break;
        }
        end = i + g.len();
    }
    &s[..end]
}

/// `s` cut at byte `at` (a grapheme boundary, e.g. from [`cut_points`]),
/// with [`ELLIPSIS`] appended.
///
/// # Panics
/// When `at` is not a character boundary of `s`.
pub fn shortened(s: &str, at: usize) -> String {
    let mut out = String::with_capacity(at + ELLIPSIS.len_utf8());
    out.push_str(&s[..at]);
    out.push(ELLIPSIS);
    out
}

/// Where to end the first piece of `s` when it must be at most `max` bytes
/// (`s` is longer): the last grapheme boundary within `max`, or, when the
/// first cluster alone is longer than `max` (only pathological stacks of
/// combining marks are), the last character boundary, so splitting always
/// makes progress. Never 0 for `max` ≥ 4.
pub fn split_point(s: &str, max: usize) -> usize {
    let end = clip(s, max).len();
    if end > 0 {
        return end;
    }
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cluster of `s` is either wholly inside `cut` or wholly outside.
    fn whole(s: &str, cut: &str) -> bool {
        cut.is_empty() || cut_points(s).contains(&cut.len()) || cut.len() == s.len()
    }

    #[test]
    fn clusters_are_kept_whole() {
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        let cases = [
            "🇩🇪".repeat(10),
            "e\u{301}".repeat(10),
            "1\u{fe0f}\u{20e3}".repeat(10),
            family.repeat(3),
            "שלום עולם".to_owned(),
        ];
        for s in cases {
            for max in 0..s.len() {
                let c = clip(&s, max);
                assert!(c.len() <= max, "{s:?} {max}");
                assert!(whole(&s, c), "{s:?} cut at {max}: {c:?}");
                // As long as possible: the next cluster would not fit.
                let next = s[c.len()..].graphemes(true).next().map_or(0, str::len);
                assert!(c.len() + next > max, "{s:?} {max}: {c:?}");
            }
            assert_eq!(clip(&s, s.len()), s);
        }
    }

    #[test]
    fn a_flag_is_never_halved() {
        let flags = "🇩🇪".repeat(3);
        assert_eq!(clip(&flags, 12), "🇩🇪");
        assert_eq!(clip(&flags, 7), "");
        assert_eq!(clip("e\u{301}e\u{301}", 4), "e\u{301}");
    }

    #[test]
    fn cut_points_and_shortened() {
        assert_eq!(cut_points(""), Vec::<usize>::new());
        assert_eq!(cut_points("ae\u{301}b"), vec![0, 1, 4]);
        assert_eq!(shortened("ae\u{301}b", 4), "ae\u{301}…");
        assert_eq!(shortened("abc", 0), "…");
    }

    #[test]
    fn split_point_prefers_clusters_and_always_progresses() {
        assert_eq!(split_point(&"🇩🇪".repeat(5), 10), 8);
        // One cluster of 1 + 300 × 2 bytes: cut at a character boundary.
        let zalgo = format!("a{}", "\u{301}".repeat(300));
        let at = split_point(&zalgo, 9);
        assert!((1..=9).contains(&at) && zalgo.is_char_boundary(at), "{at}");
    }
}
