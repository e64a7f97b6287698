//! Stored readings as the API's JSON, and BSON numbers as `f64`.

use mongodb::bson::{Bson, Document};
use serde_json::{Map, Number, Value};

/// A BSON number as `f64`.
pub fn number(b: &Bson) -> Option<f64> {
    match b {
        Bson::Double(f) => Some(*f),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

/// A stored report as JSON under its stored field names: dates as ISO 8601 UTC strings,
/// `_id` as its hex string, numbers as numbers.
pub fn report_json(d: &Document) -> Map<String, Value> {
    d.iter().map(|(k, v)| (k.clone(), bson_json(v))).collect()
}

fn bson_json(b: &Bson) -> Value {
    match b {
        Bson::DateTime(t) => Value::String(super::query::iso(t.timestamp_millis())),
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        Bson::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Boolean(v) => Value::Bool(*v),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Null => Value::Null,
        Bson::Document(d) => Value::Object(report_json(d)),
        Bson::Array(a) => Value::Array(a.iter().map(bson_json).collect()),
        other => other.clone().into_relaxed_extjson(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    // A stored report keeps its field names, with the date as ISO 8601 UTC and the id as hex.
    #[test]
    fn report_json_keeps_stored_names() {
        let id = ObjectId::new();
        let d = doc! {
            "_id": id, "nodeName": "greenhouse-pi", "humidity": 41.2, "temperature": 22.7,
            "pressure": 1013.25, "isMoving": false,
            "acceleration": { "x": 0.01, "y": -0.02, "z": 0.99 },
            "recordedAt": DateTime::from_millis(1_796_083_200_250),
        };
        let j = Value::Object(report_json(&d));
        assert_eq!(j["_id"], id.to_hex());
        assert_eq!(j["recordedAt"], "2026-12-01T00:00:00.250Z");
        assert_eq!(j["acceleration"]["z"], 0.99);
        assert_eq!(j["isMoving"], false);
        assert_eq!(j["pressure"], 1013.25);
    }
}
