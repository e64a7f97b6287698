//! The access keys a delivery must carry one of (`X-Amz-Firehose-Access-Key`), compared in
//! constant time. Several keys are allowed so that a key can be rotated without downtime.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured access keys, kept as SHA-256 digests so that every comparison is over 32 bytes
/// and constant-time whatever the key lengths.
#[derive(Clone)]
pub struct AccessKeys(Vec<[u8; 32]>);

impl AccessKeys {
    /// The digests of `keys`.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        AccessKeys(keys.into_iter().map(|k| Sha256::digest(k).into()).collect())
    }

    /// Whether `given` is one of the keys. Compares against every key, in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        let g: [u8; 32] = Sha256::digest(given).into();
        let mut any = subtle::Choice::from(0u8);
        for k in &self.0 {
            any |= k.ct_eq(&g);
        }
        !self.0.is_empty() && bool::from(any)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (no request can then be accepted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKeys({} keys)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every configured key matches (rotation); others, prefixes and the empty key do not.
    #[test]
    fn access_keys_match_any_configured_key() {
        let keys = AccessKeys::new([&b"old"[..], &b"new"[..]]);
        assert!(keys.matches(b"old"));
        assert!(keys.matches(b"new"));
        assert!(!keys.matches(b"ne"));
        assert!(!keys.matches(b""));
        assert!(!AccessKeys::new([]).matches(b""));
        assert_eq!(format!("{keys:?}"), "AccessKeys(2 keys)");
    }
}
