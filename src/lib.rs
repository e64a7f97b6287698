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
//! - [`agent`]: the fixed-rate sampling loop and the delivery loop.
//! - [`status`]: `status.json` and the `status` command.
//! - [`config`]: the agent's command line.
//! - [`shutdown`]: SIGINT/SIGTERM as a future.
//! - [`logging`]: tracing to stderr, shared by the binaries.
//! - `firehose` (feature `firehose`): the Kinesis Data Firehose HTTP endpoint that upserts deliveries.
//! - `forwarder` (feature `forwarder`): the MongoDB change stream to Kinesis forwarder.
//! - `firehose_local` (feature `forwarder`): a local Kinesis Data Firehose HTTP-endpoint delivery simulator.

pub mod agent;
pub mod board;
pub mod clock;
pub mod config;
pub mod drivers;
#[cfg(feature = "forwarder")]
pub mod firehose_local;
#[cfg(feature = "forwarder")]
pub mod forwarder;
pub mod led;
pub mod logging;
pub mod report;
pub mod shutdown;
pub mod sink;
pub mod status;

#[cfg(feature = "firehose")]
pub mod firehose;
