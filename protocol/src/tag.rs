//! Request tags: the HTTP request id a gateway sends with each request, so
//! that the host's log lines name it. At most [`MAX_REQUEST_TAG`] bytes, a
//! bound the host checks; both builders here keep it, whatever the client
//! sent as its X-Request-Id.

use crate::MAX_REQUEST_TAG;

/// `id`, cut to at most [`MAX_REQUEST_TAG`] bytes on a character boundary.
pub fn request_tag(id: &str) -> String {
    cut(id, MAX_REQUEST_TAG).to_string()
}

/// The tag of item `item` of a request with many (a v2 batch): `<id>.<item>`,
/// with `id` cut so that the whole stays within [`MAX_REQUEST_TAG`] bytes.
pub fn item_tag(id: &str, item: usize) -> String {
    let suffix = format!(".{item}");
    let room = MAX_REQUEST_TAG.saturating_sub(suffix.len());
    format!("{}{suffix}", cut(id, room))
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_kept_whole() {
        assert_eq!(request_tag("abc"), "abc");
        assert_eq!(item_tag("abc", 7), "abc.7");
    }

    #[test]
    fn ids_at_and_past_the_bound_are_cut_to_it() {
        let at = "x".repeat(MAX_REQUEST_TAG);
        assert_eq!(request_tag(&at), at);
        assert_eq!(request_tag(&format!("{at}y")), at);
        for item in [0, 9, 10, 123, usize::MAX] {
            let tag = item_tag(&at, item);
            assert_eq!(tag.len(), MAX_REQUEST_TAG, "{tag}");
            assert!(tag.ends_with(&format!(".{item}")), "{tag}");
        }
        // One byte short of the bound plus ".0" is one past it: cut by one.
        let tag = item_tag(&"x".repeat(MAX_REQUEST_TAG - 1), 0);
        assert_eq!(tag, format!("{}.0", "x".repeat(MAX_REQUEST_TAG - 2)));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // 'é' is two bytes: 63 ASCII bytes and an 'é' would end mid-character.
        let id = format!("{}é", "x".repeat(MAX_REQUEST_TAG - 1));
        assert_eq!(request_tag(&id), "x".repeat(MAX_REQUEST_TAG - 1));
        let tag = item_tag(&"é".repeat(40), 5);
        assert!(tag.len() <= MAX_REQUEST_TAG && tag.ends_with(".5"), "{tag}");
    }
}
