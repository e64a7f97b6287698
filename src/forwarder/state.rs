//! The durable position: the newest change-stream resume token whose events Kinesis has all
//! accepted, kept in MongoDB (so the forwarder can move between hosts), one document per stream:
//! `{_id: "<stream name>", database, collection, resumeToken, updatedAt}`.

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::Collection;

use super::ForwarderError;

/// Reads and writes the stored resume token.
#[derive(Clone, Debug)]
pub struct StateStore {
    coll: Collection<Document>,
    id: String,
    database: String,
    collection: String,
}

impl StateStore {
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
        }
    }

    /// The stored token, if any.
    pub async fn load(&self) -> Result<Option<ResumeToken>, ForwarderError> {
        let found = self
            .coll
            .find_one(doc! { "_id": &self.id })
            .await
            .map_err(|e| ForwarderError::State(e.to_string()))?;
        let Some(found) = found else {
            return Ok(None);
        };
        let Some(token) = found.get("resumeToken") else {
            return Ok(None);
        };
        mongodb::bson::from_bson(token.clone()).map(Some).map_err(|e| {
            ForwarderError::State(format!(
                "the stored resume token in {} is unreadable ({e}); start again with --start-from-now",
                self.coll.namespace()
            ))
        })
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
            .map_err(|e| ForwarderError::State(e.to_string()))?;
        Ok(())
    }
}
