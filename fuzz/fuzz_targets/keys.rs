//! Key parsing: the key rules, prefixes, and Greenfield's key formats.
//!
//! Never a panic; a key that passes the rules can reach nothing outside a store's root (no
//! `.`/`..`/empty segment, no leading `/`, no control character, not reserved, 1..=1024
//! bytes); a parsed Greenfield key prints as a key that parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use piecestore::key::{self, PieceKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if key::validate(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= key::MAX_KEY_LEN);
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        assert!(!s.chars().any(char::is_control));
        assert!(!s.starts_with(key::RESERVED_PREFIX) && s != ".piecestore");
        for seg in s.split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "{s:?}");
        }
        // The local-file backend's path for it stays under the root.
        let root = std::path::Path::new("/root-of-store");
        let path = root.join(s);
        assert!(path.starts_with(root));
        assert!(
            path.components()
                .all(|c| !matches!(c, std::path::Component::ParentDir))
        );
        // A valid key is a valid prefix.
        assert!(key::validate_prefix(s).is_ok(), "{s:?}");
    }
    let _ = key::validate_prefix(s);
    if let Ok(k) = PieceKey::parse(s) {
        let printed = k.to_string();
        assert_eq!(
            PieceKey::parse(&printed).ok(),
            Some(k),
            "{s:?} -> {printed:?}"
        );
        assert!(key::validate(&printed).is_ok(), "{printed:?}");
    }
    let _ = piecestore::greenfield::parse_segment_index(s);
    let _ = piecestore::greenfield::parse_challenge_index(s);
    let _ = piecestore::greenfield::is_versioned_key(s);
});
