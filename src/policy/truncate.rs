//! Cutting an alert's texts to an app's payload limit: the longest prefix
//! of a text, ending at an extended grapheme cluster boundary and followed
//! by `…`, whose rendered payload still fits. JSON escaping makes a text's
//! payload bytes grow with it in steps of 1 to 6 bytes per character, so
//! "fits" is monotone in the prefix length and a binary search over the
//! cut points finds the longest one in O(log n) renders.

use pushbridge_kit::text::{cut_points, shortened};

/// The longest `text` shortened at a grapheme boundary (with `…`) that
/// `fits` accepts, and what `fits` made of it; `None` when not even `…`
/// alone fits (or `text` is empty). `fits` returns the rendered payload
/// when it is within the limit.
pub(super) fn longest(text: &str, fits: impl Fn(&str) -> Option<String>) -> Option<String> {
    let cuts = cut_points(text);
    largest_fitting(cuts.len(), |n| fits(&shortened(text, cuts[n])))
}

/// Binary search for the largest `n` in `0..count` whose render fits.
fn largest_fitting(count: usize, fits: impl Fn(usize) -> Option<String>) -> Option<String> {
    let mut best = None;
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match fits(mid) {
            Some(s) => {
                best = Some(s);
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fits` for a plain byte budget on the text itself.
    fn within(limit: usize) -> impl Fn(&str) -> Option<String> {
        move |s: &str| (s.len() <= limit).then(|| s.to_owned())
    }

    #[test]
    fn longest_keeps_clusters_whole() {
        let flags = "🇩🇪".repeat(5);
        // 8 bytes per flag, 3 for the ellipsis.
        assert_eq!(longest(&flags, within(19)).as_deref(), Some("🇩🇪🇩🇪…"));
        assert_eq!(longest(&flags, within(18)).as_deref(), Some("🇩🇪…"));
        assert_eq!(longest(&flags, within(10)).as_deref(), Some("…"));
        assert_eq!(longest(&flags, within(2)), None);
        assert_eq!(longest("", within(100)), None);
    }
}
