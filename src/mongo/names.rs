//! The names the server takes for databases and collections, checked before any is used.

/// A database name the server takes (clap's `value_parser` for `--database`): not empty,
/// under 64 bytes, none of `/\. "$` or NUL. Refused at start rather than by every insert.
pub fn database_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() >= 64 {
        return Err("a database name has 1 to 63 bytes".into());
    }
    if let Some(c) = s.chars().find(|c| "/\\. \"$\0".contains(*c)) {
        return Err(format!(
            "a database name cannot hold {c:?} (/ \\ . \" $, spaces and NUL are not allowed)"
        ));
    }
    Ok(s.to_owned())
}

/// Longest collection name taken: with the longest database name, the dot and the longest
/// suffix a program adds (`_rejected`), still under the server's 255-byte namespace.
pub const COLLECTION_NAME_MAX: usize = 180;

/// A collection name the server takes (clap's `value_parser` for `--collection`): not empty,
/// at most [`COLLECTION_NAME_MAX`] bytes, no `$` or NUL, not in the reserved `system.`
/// namespace.
pub fn collection_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > COLLECTION_NAME_MAX {
        return Err(format!(
            "a collection name has 1 to {COLLECTION_NAME_MAX} bytes"
        ));
    }
    collection_chars(s)?;
    Ok(s.to_owned())
}

/// The server's rules for a collection's name besides its length.
fn collection_chars(s: &str) -> Result<(), String> {
    if s.contains(['$', '\0']) {
        return Err("a collection name cannot hold $ or NUL".into());
    }
    if s.starts_with("system.") {
        return Err("collection names starting with system. are the server's own".into());
    }
    Ok(())
}

/// The longest namespace (`database.collection`) the server takes, in bytes.
pub const NAMESPACE_MAX: usize = 255;

/// A collection the server takes in `database` (for names a program builds from others):
/// not empty, none of [`collection_name`]'s characters, and the whole namespace within
/// [`NAMESPACE_MAX`].
pub fn namespace(database: &str, collection: &str) -> Result<(), String> {
    if collection.is_empty() {
        return Err("a collection name cannot be empty".into());
    }
    collection_chars(collection)?;
    let len = database.len() + 1 + collection.len();
    if len > NAMESPACE_MAX {
        return Err(format!(
            "{database}.{collection} is {len} bytes, over the server's {NAMESPACE_MAX}: name the collection (or the database) shorter"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Names the server refuses are refused as options, with what is wrong; the defaults and
    // ordinary names pass.
    #[test]
    fn database_and_collection_names() {
        for good in ["monitors", "greenhouse_2", "a-b"] {
            assert_eq!(database_name(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("", "1 to 63"),
            ("a.b", "'.'"),
            ("a b", "' '"),
            ("x$", "'$'"),
        ] {
            let err = database_name(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(database_name(&"d".repeat(64)).is_err());
        for good in ["reports", "firehose", "a.b"] {
            assert_eq!(collection_name(good).as_deref(), Ok(good));
        }
        for bad in ["", "$x", "a\0b", "system.views"] {
            assert!(collection_name(bad).is_err(), "{bad:?}");
        }
        assert!(collection_name(&"c".repeat(COLLECTION_NAME_MAX)).is_ok());
        assert!(collection_name(&"c".repeat(COLLECTION_NAME_MAX + 1)).is_err());
    }

    // A name built from others (a default suffix) is checked as the server would: the whole
    // namespace within 255 bytes, whatever its collection's own length.
    #[test]
    fn namespaces() {
        assert_eq!(namespace("monitors", "reports_forwarder_state"), Ok(()));
        let long = "c".repeat(COLLECTION_NAME_MAX + 20);
        assert_eq!(namespace("d", &long), Ok(()));
        let e = namespace(&"d".repeat(63), &long).unwrap_err();
        assert!(
            e.contains("is 254 bytes") || e.contains("over the server's 255"),
            "{e}"
        );
        assert!(namespace("d", "system.x").is_err());
        assert!(namespace("d", "").is_err());
    }
}
