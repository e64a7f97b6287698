//! The durable position: the newest change-stream resume token whose events Kinesis has all
//! accepted, kept in MongoDB (so the forwarder can move between hosts), one document per stream:
//! `{_id: "<stream name>", database, collection, resumeToken, updatedAt}`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::Collection;

use super::error::store_error;
use super::ForwarderError;

/// Reads and writes the stored resume token.
#[derive(Clone, Debug)]
pub struct StateStore {
    coll: Collection<Document>,
    id: String,
    database: String,
    collection: String,
    /// When the token was last stored (ms since the epoch; 0: not known), for the metrics.
    stored_ms: Arc<AtomicI64>,
}

impl StateStore {
    /// The position of `stream_name`, reading `database.collection`, kept in `coll`.
    pub fn new(
        coll: Collection<Document>,
        stream_name: &str,
        database: &str,
        collection: &str,
    ) -> Self {
        StateStore {
            coll,
            id: stream_name.to_owned(),
            database: database.to_owned(),
            collection: collection.to_owned(),
            stored_ms: Arc::default(),
        }
    }

    /// Keep when the token was last stored (or, at [`StateStore::load`], when the stored one
    /// was: its `updatedAt`) in `stored_ms`, ms since the epoch.
    pub fn reporting_to(mut self, stored_ms: Arc<AtomicI64>) -> Self {
        self.stored_ms = stored_ms;
        self
    }

    /// The stored token, if any.
    pub async fn load(&self) -> Result<Option<ResumeToken>, ForwarderError> {
        let found = self
            .coll
            .find_one(doc! { "_id": &self.id })
            .await
            .map_err(|e| store_error(&e))?;
        let Some(found) = found else {
            return Ok(None);
        };
        // A position kept for another collection (a shared state collection, or --collection
        // changed under the same stream name) would resume the wrong stream, or be refused.
        let kept_for = (found.get_str("database"), found.get_str("collection"));
        if let (Ok(database), Ok(collection)) = kept_for {
            if (database, collection) != (self.database.as_str(), self.collection.as_str()) {
                return Err(ForwarderError::Position(format!(
                    "the position stored for stream {:?} in {} is for {database}.{collection}, not \
                     {}.{}: give this forwarder its own --stream-name or --state-collection, or \
                     start from now with --start-from-now (its position is then overwritten)",
                    self.id,
                    self.coll.namespace(),
                    self.database,
                    self.collection
                )));
            }
        }
        let Some(token) = found.get("resumeToken") else {
            return Ok(None);
        };
        if let Ok(at) = found.get_datetime("updatedAt") {
            self.stored_ms
                .store(at.timestamp_millis(), Ordering::Relaxed);
        }
        mongodb::bson::from_bson(token.clone()).map(Some).map_err(|e| {
            ForwarderError::Position(format!(
                "the stored resume token in {} is unreadable ({e}); start again with --start-from-now",
                self.coll.namespace()
            ))
        })
    }

    /// The streams with a position stored for the same collection, other than this one (empty
    /// when they cannot be read: only a warning depends on it).
    pub async fn other_streams(&self) -> Vec<String> {
        let filter = doc! {
            "_id": { "$ne": &self.id },
            "database": &self.database,
            "collection": &self.collection,
        };
        let Ok(mut cursor) = self.coll.find(filter).await else {
            return Vec::new();
        };
        let mut names = Vec::new();
        while let Ok(true) = cursor.advance().await {
            if let Ok(Ok(name)) = cursor
                .deserialize_current()
                .map(|d: Document| d.get_str("_id").map(str::to_owned))
            {
                names.push(name);
            }
        }
        names
    }

    /// Store `token` as the position to resume after.
    pub async fn save(&self, token: &ResumeToken) -> Result<(), ForwarderError> {
        let token: Bson =
            mongodb::bson::to_bson(token).map_err(|e| ForwarderError::State(e.to_string()))?;
        self.coll
            .update_one(
                doc! { "_id": &self.id },
                doc! { "$set": {
                    "database": &self.database,
                    "collection": &self.collection,
                    "resumeToken": token,
                    "updatedAt": DateTime::now(),
                } },
            )
            .upsert(true)
            .await
            .map_err(|e| store_error(&e))?;
        self.stored_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        Ok(())
    }
}
