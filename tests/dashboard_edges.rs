//! The dashboard binary against a real MongoDB wire-protocol server (SecantusDB) holding odd
//! documents, and against clients that misbehave: what one bad document or one idle client
//! must not do to everything else.
#![cfg(feature = "dashboard")]

mod common;
mod dashboard_support;

use mongodb::bson::DateTime;
use serde_json::Value;

use common::MongoServer;
use dashboard_support::{insert, readings, Dashboard};

/// The names `/api/nodes` lists.
fn listed(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|n| n["nodeName"].as_str().expect("a string name"))
        .collect()
}

// A document with an empty `nodeName` is no node, and one whose `nodeName` is an array is
// listed under each of its elements (as `distinct` and every query find it): each name listed
// is one whose chart answers. They used to be listed under the document's own name, "" (a
// 400: missing parameter) or the array (shown as "arr1,arr2", a 404), and the page's one
// failed request blanked every node's chart.
#[tokio::test(flavor = "multi_thread")]
async fn odd_node_names_leave_every_listed_node_chartable() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_odd_names");
    let now = DateTime::now().timestamp_millis();
    let mut docs = readings("node-a", 0, now - 60_000, 1_000, 30, 0..0, 0);
    let mut empty = readings("", 1, now - 30_000, 1_000, 1, 0..0, 0).remove(0);
    empty.insert("nodeName", "");
    let mut array = readings("x", 2, now - 20_000, 1_000, 1, 0..0, 0).remove(0);
    array.insert("nodeName", vec!["arr1", "arr2"]);
    let mut number = readings("x", 3, now - 10_000, 1_000, 1, 0..0, 0).remove(0);
    number.insert("nodeName", 7);
    docs.extend([empty, array, number]);
    insert(&server.client().await, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        assert_eq!(listed(&list), ["arr1", "arr2", "node-a"], "{list}");
        for node in listed(&list) {
            let chart = dash.json(&format!("/api/chart?node={node}"));
            assert_eq!(chart["node"], node);
        }
        let a = &list[2];
        assert_eq!(a["temperature"].as_f64().map(|t| t > 0.0), Some(true));
        assert_eq!(list[0]["stale"], false, "{list}");
    })
    .await
    .unwrap();
}

// A node's tile shows its latest reading dated up to a minute ahead of now, not one from a
// clock that ran a day ahead: that one used to pin the tile for a day, "0 s ago" and never
// stale, while the charts (a window ending now) left it out.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_dated_ahead_does_not_pin_the_tile() {
    const DAY: i64 = 86_400_000;
    let server = MongoServer::start();
    let db = common::unique_name("dash_ahead");
    let now = DateTime::now().timestamp_millis();
    let mut docs = readings("node-a", 0, now - 30_000, 1_000, 10, 0..0, 0);
    let last = docs.last().unwrap().get_datetime("recordedAt").unwrap();
    let last = last.timestamp_millis();
    let mut ahead = readings("node-a", 0, now + DAY, 1_000, 1, 0..0, 0);
    ahead[0].insert("temperature", 99.5);
    docs.extend(ahead);
    // Within the slack: a clock a little ahead of the dashboard's still counts.
    let mut near = readings("node-b", 1, now + 20_000, 1_000, 1, 0..0, 0);
    near[0].insert("temperature", 12.5);
    docs.extend(near);
    insert(&server.client().await, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        assert_eq!(listed(&list), ["node-a", "node-b"], "{list}");
        let a = &list[0];
        assert_eq!(a["recordedAt"], dashboard_support::iso(last), "{a}");
        assert_ne!(a["temperature"], 99.5, "{a}");
        assert!(a["ageSeconds"].as_f64().unwrap() >= 20.0, "{a}");
        assert_eq!(list[1]["temperature"], 12.5, "{list}");
    })
    .await
    .unwrap();
}
