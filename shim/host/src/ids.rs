//! Container and task IDs: what is accepted, and short stable names for
//! directories that hold Unix sockets.

/// An ID that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
)]
pub struct InvalidId(pub String);

/// Checks a container ID.
pub fn check_id(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(InvalidId(id.to_string()))
    }
}

/// A short, stable file name for `key` (16 hex digits of its FNV-1a hash,
/// which unlike std's hasher does not change between builds), for
/// directories that hold Unix sockets and so must keep paths short.
pub fn short_name(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "c1", "abc-DEF_1.2", &"f".repeat(128)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "..", "a b", &"f".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
