//! The naive way to draw a dashboard chart, for `scripts/bench-dashboard.sh` to compare
//! with the dashboard's in-database bucketing: fetch every reading of one node in the window
//! and bucket it here. Prints the bucket count and the seconds it took.
//!
//! `dashboard_naive URI DB COLLECTION NODE FIELD FROM_MS TO_MS BUCKET_MS`

use std::collections::BTreeMap;
use std::time::Instant;

use mongodb::bson::{doc, DateTime, Document};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(
        a.len(),
        8,
        "usage: URI DB COLLECTION NODE FIELD FROM_MS TO_MS BUCKET_MS"
    );
    let ms = |i: usize| a[i].parse::<i64>().expect("milliseconds");
    let (from, to, width) = (ms(5), ms(6), ms(7));
    let started = Instant::now();
    let client = mongodb::Client::with_uri_str(&a[0]).await.expect("client");
    let coll = client.database(&a[1]).collection::<Document>(&a[2]);
    let filter = doc! {
        "nodeName": &a[3],
        "recordedAt": { "$gte": DateTime::from_millis(from), "$lt": DateTime::from_millis(to) },
    };
    let mut cursor = coll
        .find(filter)
        .sort(doc! { "recordedAt": 1 })
        .await
        .expect("find");
    let mut buckets: BTreeMap<i64, (f64, f64, f64, u64)> = BTreeMap::new();
    let mut docs = 0u64;
    while cursor.advance().await.expect("cursor") {
        let d = cursor.deserialize_current().expect("document");
        docs += 1;
        let (Ok(t), Ok(v)) = (d.get_datetime("recordedAt"), d.get_f64(&a[4])) else {
            continue;
        };
        let t = t.timestamp_millis();
        let e = buckets
            .entry(sensehat_monitor::dashboard::query::bucket_start(t, width))
            .or_insert((0.0, f64::MAX, f64::MIN, 0));
        *e = (e.0 + v, e.1.min(v), e.2.max(v), e.3 + 1);
    }
    println!(
        "{} buckets from {docs} documents in {:.3} s",
        buckets.len(),
        started.elapsed().as_secs_f64()
    );
}
