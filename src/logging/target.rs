//! A request target as a log line may show it: the path only. The query (which may carry
//! `access_token=`, an API key or a signed URL's signature), the fragment, and an
//! absolute-form target's scheme and authority (which may carry `user:password@`) never reach
//! a log; a very long path is cut.

/// Characters of a path kept in a line; the rest is cut, marked with `…`.
const MAX_CHARS: usize = 256;

/// The path of `raw` (a request target as the client sent it), for a log line.
pub fn loggable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut path: &str = &text;
    let lower = path
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let rest = &path[path.find("://").map_or(0, |i| i + 3)..];
        path = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    match path.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_path_is_logged() {
        assert_eq!(loggable(b"/upload?access_token=SECRET"), "/upload");
        assert_eq!(loggable(b"/a#frag?x"), "/a");
        assert_eq!(loggable(b"http://u:pw@h.test/x?k=v"), "/x");
        assert_eq!(loggable(b"HTTPS://u:pw@h.test"), "/");
        assert_eq!(loggable(b"*"), "*");
        let long = format!("/{}", "a".repeat(1000));
        let cut = loggable(long.as_bytes());
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
