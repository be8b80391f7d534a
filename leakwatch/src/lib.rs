//! leakwatch: find credentials leaking through command lines, environments, logs, dumps and
//! sockets on a Linux host, and freeze a leaked one. The binary (`main.rs`) only wires these
//! modules together.
pub mod actions;
pub mod alerts;
pub mod classify;
pub mod cli;
pub mod config;
pub mod control;
pub mod core_handler;
pub mod crash;
pub mod daemon;
pub mod dest;
pub mod detect;
pub mod events;
pub mod fleet;
pub mod install;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod probes;
pub mod procs;
pub mod recent;
pub mod respond;
pub mod scan;
pub mod scope;
pub mod sinks;
pub mod source;
