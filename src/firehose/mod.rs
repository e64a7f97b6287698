//! The Kinesis Data Firehose HTTP endpoint: receives deliveries (the contract of Firehose's
//! "HTTP endpoint delivery"), decodes each record and upserts it by `_id` into MongoDB
//! (`monitors.firehose` by default), answering 200 only once every write is acknowledged.
//!
//! - [`protocol`]: headers, request and response bodies, the size-capped (gzip) body reader.
//! - [`decode`]: record data to BSON documents, the dead-letter reasons, derived `_id`s. Pure.
//! - [`store`]: the upsert layer (`bulkWrite` on 8.0+, the `update` command before).
//! - [`metrics`]: what the endpoint counts, for `--metrics-listen`.
//! - [`server`]: the router ([`server::app`]), the checks of each request, and [`server::serve`].
//! - [`config`]: the `firehose-endpoint` command line and the [`config::Config`] built from it.
//! - [`service`]: [`check_config`] and [`run`], what the binary calls.

pub mod config;
pub mod decode;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod service;
pub mod store;

pub use config::Config;
pub use server::{app, serve, AppState, EndpointConfig, RequestError};
pub use service::{check_config, run};
pub use store::{Store, UpsertMethod};
