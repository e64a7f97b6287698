//! Reading the server's reply to an upsert command: `run_raw_command` raises only a reply with
//! `ok: 0`; write errors, a write concern error and a short count come inside `ok: 1`.

use mongodb::bson::{Bson, Document};

use super::{StoreError, REFUSED_FOR_GOOD};
use crate::mongo::{reply_count, reply_ok, write_concern_error};

/// The first write error of an ordered command (the only one: it stops there), whose index
/// among the command's `statements` is in `index_key`: refused for good, or worth a retry. An
/// index past the statements (a server or proxy that miscounts) is a retry, never taken as
/// the place of a refused document.
fn write_error(errors: i64, first: &Document, index_key: &str, statements: usize) -> StoreError {
    let (index, code) = (reply_count(first, index_key), reply_count(first, "code"));
    let message = first.get_str("errmsg").unwrap_or("").to_owned();
    match usize::try_from(index) {
        Ok(at) if at < statements && REFUSED_FOR_GOOD.contains(&code) => {
            StoreError::Refused { at, code, message }
        }
        _ => StoreError::Write(format!(
            "{errors} write errors, first at {index}: {message} (code {code})"
        )),
    }
}

/// A document the server refused for good ([`REFUSED_FOR_GOOD`]) in an unordered command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its index among the documents of the write.
    pub at: usize,
    /// The server's error code.
    pub code: i64,
    /// The server's message.
    pub message: String,
}

fn failed_command(reply: &Document, name: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{name} command failed: {}",
        reply.get_str("errmsg").unwrap_or("no errmsg")
    ))
}

/// A `bulkWrite` reply (with `errorsOnly`) is a success only with `ok: 1`, `nErrors: 0`, no
/// `writeConcernError`, and every statement counted (`nMatched` + `nUpserted`). The first
/// error, if any, is in `cursor.firstBatch` (the command is ordered, so it stops there).
///
/// A write concern error comes first, even beside a refused record: the records before that
/// one are not durable yet (a failover could roll them back), so the whole request is a retry,
/// not "stored up to the refused one".
pub fn check_bulk_write_reply(reply: &Document, statements: usize) -> Result<(), StoreError> {
    if !reply_ok(reply) {
        return Err(failed_command(reply, "bulkWrite"));
    }
    if let Some(e) = write_concern_error(reply) {
        return Err(StoreError::Unavailable(e));
    }
    let errors = reply_count(reply, "nErrors");
    if errors != 0 {
        let first = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .ok()
            .and_then(|b| b.first())
            .and_then(Bson::as_document);
        return Err(match first {
            Some(e) => write_error(errors, e, "idx", statements),
            None => StoreError::Write(format!("{errors} write errors")),
        });
    }
    let n = reply_count(reply, "nMatched") + reply_count(reply, "nUpserted");
    if n != statements as i64 {
        return Err(StoreError::Unavailable(format!(
            "bulkWrite counted {n} of {statements} statements"
        )));
    }
    Ok(())
}

/// An `update` reply is a success only with `ok: 1`, no `writeErrors`, no `writeConcernError`,
/// and every statement counted (`n` = matched + upserted). A write concern error comes first,
/// as in [`check_bulk_write_reply`].
pub fn check_update_reply(reply: &Document, statements: usize) -> Result<(), StoreError> {
    if !reply_ok(reply) {
        return Err(failed_command(reply, "update"));
    }
    if let Some(e) = write_concern_error(reply) {
        return Err(StoreError::Unavailable(e));
    }
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Err(write_error(errors.len() as i64, first, "index", statements));
        }
    }
    let n = reply_count(reply, "n");
    if n != statements as i64 {
        return Err(StoreError::Unavailable(format!(
            "update command counted {n} of {statements} statements"
        )));
    }
    Ok(())
}

/// An unordered `update` reply: Ok with every statement refused for good when all the others
/// were counted (`n` + refused = statements). The command went on past each write error, so
/// `writeErrors` lists them all; one that may pass (or a write concern error, `ok: 0`, a short
/// count) fails the whole command, to be retried: the upserts make that safe.
pub fn check_unordered_update_reply(
    reply: &Document,
    statements: usize,
) -> Result<Vec<Refusal>, StoreError> {
    if !reply_ok(reply) {
        return Err(failed_command(reply, "update"));
    }
    if let Some(e) = write_concern_error(reply) {
        return Err(StoreError::Unavailable(e));
    }
    let errors = reply.get_array("writeErrors").map_or(&[][..], |a| &a[..]);
    let mut refused = Vec::with_capacity(errors.len());
    for e in errors {
        let Some(e) = e.as_document() else {
            return Err(StoreError::Write(
                "a write error that is not a document".into(),
            ));
        };
        match write_error(errors.len() as i64, e, "index", statements) {
            StoreError::Refused { at, code, message } => {
                refused.push(Refusal { at, code, message })
            }
            other => return Err(other),
        }
    }
    let n = reply_count(reply, "n");
    if n + refused.len() as i64 != statements as i64 {
        return Err(StoreError::Unavailable(format!(
            "update command counted {n} of {statements} statements, {} refused",
            refused.len()
        )));
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    // A reply with writeErrors inside ok:1 is a failure (run_command does not raise it): one
    // that writing the document again cannot clear names the document, another is a retry.
    #[test]
    fn write_errors_in_an_ok_reply_fail() {
        let reply = doc! { "ok": 1.0, "n": 1, "writeErrors": [ { "index": 1, "code": 11000, "errmsg": "dup" } ] };
        let e = check_update_reply(&reply, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Refused { at: 1, code: 11000, ref message } if message == "dup"),
            "{e}"
        );
        assert!(matches!(e.after(500), StoreError::Refused { at: 501, .. }));
        let conflict = doc! { "ok": 1.0, "n": 1, "writeErrors": [ { "index": 1, "code": 112, "errmsg": "write conflict" } ] };
        let e = check_update_reply(&conflict, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Write(ref m) if m.contains("112")),
            "{e}"
        );
        // An `_id` of another type than the stored one's, in either command's reply.
        let immutable = doc! { "ok": 1.0, "n": 0, "writeErrors": [ { "index": 0, "code": 66, "errmsg": "_id altered" } ] };
        let bulk = doc! { "ok": 1.0, "nErrors": 1, "nMatched": 0, "nUpserted": 0,
        "cursor": { "id": 0i64, "firstBatch": [
            { "ok": 0.0, "idx": 0, "code": 66, "errmsg": "_id altered" } ] } };
        for e in [
            check_update_reply(&immutable, 1).unwrap_err(),
            check_bulk_write_reply(&bulk, 1).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    StoreError::Refused {
                        at: 0,
                        code: 66,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    // A refusal that names a document past those of the command (a server or proxy that
    // miscounts) is a retry, not a place to cut the chunk at: the endpoint indexed its
    // documents with it, and panicked on every retry of the request.
    #[test]
    fn a_refusal_past_the_statements_is_a_retry() {
        let update = doc! { "ok": 1.0, "n": 2, "writeErrors": [ { "index": 2, "code": 11000, "errmsg": "dup" } ] };
        let e = check_update_reply(&update, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Write(ref m) if m.contains("11000")),
            "{e}"
        );
        let bulk = doc! { "ok": 1.0, "nErrors": 1, "nMatched": 0, "nUpserted": 2,
        "cursor": { "id": 0i64, "firstBatch": [
            { "ok": 0.0, "idx": 7, "code": 121, "errmsg": "failed validation" } ] } };
        let e = check_bulk_write_reply(&bulk, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Write(ref m) if m.contains("121")),
            "{e}"
        );
    }

    // A write concern error beside a refused record is a retry of the whole request: the
    // records before the refused one are not durable (they were counted stored, and answered
    // 200, so a rollback lost them).
    #[test]
    fn a_write_concern_error_beside_a_refused_record_is_a_retry() {
        let wce = doc! { "code": 64, "errmsg": "waiting for replication timed out" };
        let update = doc! { "ok": 1.0, "n": 1, "writeConcernError": wce.clone(),
        "writeErrors": [ { "index": 1, "code": 121, "errmsg": "failed validation" } ] };
        let e = check_update_reply(&update, 3).unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(ref m) if m.contains("replication")),
            "{e}"
        );
        let bulk = doc! { "ok": 1.0, "nErrors": 1, "nMatched": 0, "nUpserted": 1,
        "writeConcernError": wce,
        "cursor": { "id": 0i64, "firstBatch": [
            { "ok": 0.0, "idx": 1, "code": 121, "errmsg": "failed validation" } ] } };
        let e = check_bulk_write_reply(&bulk, 3).unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(ref m) if m.contains("replication")),
            "{e}"
        );
    }

    // A write concern error, ok:0, or a short count are failures; a full count with ok:1 is success.
    #[test]
    fn update_reply_checks() {
        let wce =
            doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "timeout" } };
        assert!(matches!(
            check_update_reply(&wce, 2),
            Err(StoreError::Unavailable(_))
        ));
        let not_ok = doc! { "ok": 0.0, "errmsg": "not primary" };
        assert!(matches!(
            check_update_reply(&not_ok, 2),
            Err(StoreError::Unavailable(_))
        ));
        let short = doc! { "ok": 1.0, "n": 1 };
        assert!(check_update_reply(&short, 2).is_err());
        let good =
            doc! { "ok": 1.0, "n": 2, "nModified": 1, "upserted": [ { "index": 1, "_id": 1 } ] };
        assert!(check_update_reply(&good, 2).is_ok());
    }

    // bulkWrite replies: errors, write concern errors and short counts inside ok:1 are failures.
    #[test]
    fn bulk_write_reply_checks() {
        let error = doc! {
            "ok": 1.0, "nErrors": 1, "nInserted": 0, "nMatched": 0, "nModified": 0, "nUpserted": 1,
            "cursor": { "id": 0i64, "ns": "admin.$cmd.bulkWrite", "firstBatch": [
                { "ok": 0.0, "idx": 1, "code": 11000, "errmsg": "E11000 duplicate key" } ] },
        };
        let e = check_bulk_write_reply(&error, 2).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Refused {
                    at: 1,
                    code: 11000,
                    ..
                }
            ),
            "{e}"
        );
        let timeout = doc! {
            "ok": 1.0, "nErrors": 1, "nMatched": 0, "nUpserted": 0,
            "cursor": { "id": 0i64, "firstBatch": [
                { "ok": 0.0, "idx": 0, "code": 50, "errmsg": "operation exceeded time limit" } ] },
        };
        let e = check_bulk_write_reply(&timeout, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Write(ref m) if m.contains("first at 0") && m.contains("50")),
            "{e}"
        );
        let wce = doc! { "ok": 1.0, "nErrors": 0, "nMatched": 1, "nUpserted": 1,
        "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } };
        assert!(matches!(
            check_bulk_write_reply(&wce, 2),
            Err(StoreError::Unavailable(ref m)) if m.contains("replication")
        ));
        let short = doc! { "ok": 1.0, "nErrors": 0, "nMatched": 1, "nUpserted": 0 };
        assert!(check_bulk_write_reply(&short, 2).is_err());
        let not_ok = doc! { "ok": 0.0, "errmsg": "not primary" };
        assert!(check_bulk_write_reply(&not_ok, 2).is_err());
        let good = doc! { "ok": 1.0, "nErrors": 0, "nMatched": 1i64, "nUpserted": 1i64,
        "cursor": { "id": 0i64, "firstBatch": [] } };
        assert!(check_bulk_write_reply(&good, 2).is_ok());
    }

    // An unordered reply lists every refused statement; one write error that may pass, among
    // refused ones, fails the whole command (a retry), as does a count that does not add up.
    #[test]
    fn unordered_update_reply_lists_every_refusal() {
        let refused = doc! { "ok": 1.0, "n": 2, "writeErrors": [
        { "index": 1, "code": 11000, "errmsg": "dup" },
        { "index": 3, "code": 121, "errmsg": "failed validation" } ] };
        let r = check_unordered_update_reply(&refused, 4).unwrap();
        let at: Vec<(usize, i64)> = r.iter().map(|r| (r.at, r.code)).collect();
        assert_eq!(at, [(1, 11000), (3, 121)]);
        assert_eq!(r[1].message, "failed validation");
        let transient = doc! { "ok": 1.0, "n": 2, "writeErrors": [
        { "index": 1, "code": 11000, "errmsg": "dup" },
        { "index": 2, "code": 112, "errmsg": "write conflict" } ] };
        assert!(matches!(
            check_unordered_update_reply(&transient, 4),
            Err(StoreError::Write(ref m)) if m.contains("112")
        ));
        let short = doc! { "ok": 1.0, "n": 1, "writeErrors": [
        { "index": 1, "code": 11000, "errmsg": "dup" } ] };
        assert!(check_unordered_update_reply(&short, 3).is_err());
        let good = doc! { "ok": 1.0, "n": 3 };
        assert_eq!(check_unordered_update_reply(&good, 3).unwrap(), []);
    }
}
