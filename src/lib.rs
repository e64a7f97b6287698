//! sensehat-monitor: read a Raspberry Pi Sense HAT and store every reading in MongoDB, without
//! losing any across network, database, power or sensor faults.
//!
//! # Layout
//!
//! - [`drivers`]: HTS221, LPS25H and LSM9DS1 drivers, generic over `embedded_hal::i2c::I2c`.
//! - [`board`]: the Sense HAT composed of the drivers, the Linux bus, and the register-level simulator.
//! - [`led`]: the 8x8 LED matrix: frames (pure) and the framebuffer writer (IO).
//! - [`report`]: the report document and its JSON forms.
//! - [`sink`]: the durable spool and the MongoDB inserter.
//! - [`mongo`]: what the programs share about MongoDB: connecting, connection-string checks and
//!   redaction, error classification, duplicate keys.
//! - [`agent`]: the fixed-rate sampling loop and the delivery loop.
//! - [`clock`]: holding readings until the system clock is synchronized, and their on-disk copy.
//! - [`fsutil`]: replacing a state file whole, synced or not.
//! - [`retry`]: the shape of every retry schedule (exponential, with jitter).
//! - [`shared_read`]: one read at a time for every request that wants it, its outcome reused.
//! - [`say_once`]: state types that say a condition once per change, or again each period.
//! - [`status`]: `status.json` and the `status` command.
//! - [`cli`]: the conventions the programs' command lines share (durations, `check-config`).
//! - [`config`]: the agent's command line.
//! - [`shutdown`]: SIGINT/SIGTERM as a future.
//! - [`logging`]: tracing to stderr, shared by the binaries.
//! - [`listener`]: serving HTTP/1.1 with a header timeout, a connection cap and a bounded stop,
//!   over TCP or a [`listener::Transport`] (the endpoint's TLS); shared by the metrics listener,
//!   the dashboard and the endpoint.
//! - [`metrics`]: Prometheus metrics and health checks (`--metrics-listen`), shared by the programs.
//! - `firehose` (feature `firehose`): the Kinesis Data Firehose HTTP endpoint that upserts deliveries.
//! - `forwarder` (feature `forwarder`): the MongoDB change stream to Kinesis forwarder.
//! - `dashboard` (feature `dashboard`): the read-only web page of the readings, its API, and charts as files.
//! - `firehose_local` (feature `forwarder`): a local Kinesis Data Firehose HTTP-endpoint delivery simulator.

#![warn(missing_docs)]

pub mod agent;
pub mod board;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod drivers;
#[cfg(feature = "forwarder")]
pub mod firehose_local;
#[cfg(feature = "forwarder")]
pub mod forwarder;
pub mod fsutil;
pub mod led;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mongo;
pub mod report;
pub mod retry;
pub mod say_once;
pub mod shared_read;
pub mod shutdown;
pub mod sink;
pub mod status;

#[cfg(feature = "firehose")]
pub mod firehose;

/// Most bytes of data in one record Kinesis Data Firehose delivers (1,000 KiB), a limit of its
/// own below Kinesis's 1 MiB record: the forwarder refuses larger ones, firehose-local sends them
/// to its error output as Firehose does, and the endpoint dead-letters them unparsed.
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1_024_000;
