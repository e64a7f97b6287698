//! The EventBridge target: PutEvents through the AWS SDK ([`AwsEventBridge`]), with the Source
//! and DetailType that `deploy/aws/pipeline.yaml`'s rule matches, and the sorting of failed
//! PutEvents entries (a failed call is sorted as a Kinesis one is, [`super::aws`]).
//!
//! Each event's Detail is the document in the chosen `--format`. EventBridge wants Detail to be
//! a JSON object; every format the forwarder offers writes a document as one (`stringify` as
//! `JSON.stringify` of it, `relaxed` and `canonical` as Extended JSON of it), so nothing is
//! wrapped, and a rule's target with `InputPath: $.detail` receives what a Kinesis record's data
//! would hold.

use aws_sdk_eventbridge::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::aws::{is_fatal, load_checked};
use super::batch::{Entry, Limits, DETAIL_TYPE, EVENTBRIDGE, SOURCE};
use super::target::{entry_results, EntryFailure, EntryResults, PutError, Target};

/// PutEvents calls in flight at once. A call carries at most 10 events, so one at a time holds the
/// forwarder to 10 events per round trip: 100 a second at 100 ms, some 50 Pis, past which the
/// backlog grows until the oplog no longer holds it. EventBridge keeps no order between events,
/// so calls may overlap. With 8 the ceiling is 80 events per round trip (800 a second at
/// 100 ms), and what the forwarder holds stays small: 8 batches of at most 256 KiB (2 MiB) and
/// 8 connections. More would mostly reach the account's PutEvents quota (per Region, shared with
/// every other producer) sooner, where each throttled call is resent on its own back-off.
pub const EVENTBRIDGE_PUTS_IN_FLIGHT: usize = 8;

/// The AWS SDK's EventBridge client: credentials and region from the standard chain, and an
/// optional endpoint URL for an emulator.
#[derive(Clone, Debug)]
pub struct AwsEventBridge {
    /// The SDK client, for calls beyond PutEvents.
    pub client: aws_sdk_eventbridge::Client,
}

impl AwsEventBridge {
    /// The client, once a region and credentials were found (as for Kinesis, see
    /// [`super::aws::client_from_env`]).
    pub async fn from_env(endpoint_url: Option<&str>) -> Result<Self, String> {
        let config = load_checked(endpoint_url).await?;
        Ok(AwsEventBridge {
            client: aws_sdk_eventbridge::Client::new(&config),
        })
    }
}

impl AwsEventBridge {
    /// Whether `bus` can be reached, for `/readyz`: one DescribeEventBus, without the SDK's
    /// retries. AccessDenied (forwarding needs only PutEvents) still shows that EventBridge
    /// answers, so it counts as reachable; a bus that does not exist does not, when the role
    /// may describe it (the template's policy grants DescribeEventBus for this).
    pub async fn reachable(&self, bus: &str) -> Result<(), String> {
        let answer = self
            .client
            .describe_event_bus()
            .name(bus)
            .customize()
            .config_override(
                aws_sdk_eventbridge::config::Builder::default()
                    .retry_config(aws_sdk_eventbridge::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(e) => match e.code() {
                Some("AccessDeniedException") => Ok(()),
                Some("ResourceNotFoundException") => {
                    Err(format!("EventBridge bus {bus} does not exist"))
                }
                _ => Err(format!(
                    "EventBridge unreachable: {}",
                    DisplayErrorContext(&e)
                )),
            },
        }
    }
}

/// Error codes of one PutEvents entry that mean the forwarder may not put it: a policy that does
/// not allow the bus, or allows only other Sources or DetailTypes. Every entry will fail so.
const DENIED_ENTRY_CODES: &[&str] = &[
    "AccessDeniedException",
    "NotAuthorizedForSourceException",
    "NotAuthorizedForDetailTypeException",
    "InvalidAccountIdException",
];

/// Error codes of one PutEvents entry that mean this entry can never be accepted. (The
/// forwarder's entries are JSON objects within the size limit, so these are not expected.)
const REFUSED_ENTRY_CODES: &[&str] = &["InvalidArgument", "MalformedDetail", "RedactionFailure"];

/// One PutEvents entry for `entry`, on `bus`.
fn request_entry(bus: &str, entry: &Entry) -> Result<PutEventsRequestEntry, PutError> {
    let detail = std::str::from_utf8(&entry.data)
        .map_err(|e| PutError::Fatal(format!("Detail is not UTF-8: {e}")))?;
    Ok(PutEventsRequestEntry::builder()
        .source(SOURCE)
        .detail_type(DETAIL_TYPE)
        .detail(detail)
        .event_bus_name(bus)
        .build())
}

impl Target for AwsEventBridge {
    const LIMITS: Limits = EVENTBRIDGE;
    const API: &'static str = "PutEvents";
    const PUTS_IN_FLIGHT: usize = EVENTBRIDGE_PUTS_IN_FLIGHT;

    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let requests = entries
            .iter()
            .map(|e| request_entry(bus, e))
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .put_events()
            .set_entries(Some(requests))
            .send()
            .await
            .map_err(|e| PutError::of_call(DisplayErrorContext(&e).to_string(), is_fatal(&e)))?;
        let answered = output
            .entries()
            .iter()
            .map(|r| (r.error_code(), r.error_message()));
        entry_results("PutEvents", entries.len(), answered)
    }

    /// PutEventsResultEntry's documented codes: InternalFailure and ThrottlingException are
    /// worth retrying, the others are not. A code not listed is resent, as it was before.
    fn entry_failure(reason: &str) -> EntryFailure {
        let code = reason.split(':').next().unwrap_or("").trim();
        if DENIED_ENTRY_CODES.contains(&code) {
            EntryFailure::Denied
        } else if REFUSED_ENTRY_CODES.contains(&code) {
            EntryFailure::Refused
        } else {
            EntryFailure::Resend
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::format::Format;
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    // The pipeline template's rule matches exactly the Source and DetailType put here.
    #[test]
    fn the_template_rule_matches_source_and_detail_type() {
        let template = include_str!("../../deploy/aws/pipeline.yaml");
        assert!(
            template.contains(&format!("source: [{SOURCE}]")),
            "deploy/aws/pipeline.yaml's rule does not match Source {SOURCE:?}"
        );
        assert!(
            template.contains(&format!("detail-type: [{DETAIL_TYPE}]")),
            "deploy/aws/pipeline.yaml's rule does not match DetailType {DETAIL_TYPE:?}"
        );
    }

    // Every format writes a document as a JSON object, as Detail must be: nothing is wrapped.
    #[test]
    fn every_format_is_a_json_object() {
        let d = doc! { "_id": ObjectId::new(), "n": 1.5, "at": DateTime::from_millis(0) };
        for format in [Format::Stringify, Format::Relaxed, Format::Canonical] {
            let v: serde_json::Value = serde_json::from_slice(&format.encode(&d)).unwrap();
            assert!(v.is_object(), "{format:?}");
        }
    }

    // Entry error codes sort as the API reference sorts them, by their code only.
    #[test]
    fn entry_failures_sort_by_code() {
        let of = <AwsEventBridge as Target>::entry_failure;
        assert_eq!(
            of("ThrottlingException: Rate exceeded"),
            EntryFailure::Resend
        );
        assert_eq!(of("InternalFailure: "), EntryFailure::Resend);
        assert_eq!(of("SomethingNew: ?"), EntryFailure::Resend);
        assert_eq!(
            of("NotAuthorizedForSourceException: Not authorized for the source."),
            EntryFailure::Denied
        );
        assert_eq!(of("AccessDeniedException: no"), EntryFailure::Denied);
        assert_eq!(
            of("MalformedDetail: Detail is malformed."),
            EntryFailure::Refused
        );
        // A message that names a code is not the code.
        assert_eq!(
            of("InternalFailure: not MalformedDetail"),
            EntryFailure::Resend
        );
    }

    // Entries carry the fixed Source and DetailType, the bus, and the data as Detail.
    #[test]
    fn entries_carry_source_detail_type_and_bus() {
        let e = Entry {
            data: br#"{"a":1}"#.to_vec(),
            partition_key: "pi-1".into(),
        };
        let r = request_entry("bus-1", &e).unwrap();
        assert_eq!(r.source(), Some(SOURCE));
        assert_eq!(r.detail_type(), Some(DETAIL_TYPE));
        assert_eq!(r.event_bus_name(), Some("bus-1"));
        assert_eq!(r.detail(), Some(r#"{"a":1}"#));
    }
}
