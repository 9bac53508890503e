//! agentwarden: runtime control for AI agents. The binary is a thin wrapper; all logic
//! lives in these modules.

pub mod audit;
pub mod cli;
pub mod client;
pub mod containers;
pub mod daemon;
pub mod dns;
pub mod drift;
pub mod event;
pub mod hooks;
pub mod inventory;
pub mod loader;
pub mod memory;
pub mod offsets;
pub mod otlp;
pub mod output;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod profiles;
pub mod proto;
pub mod session;
pub mod skip;
pub mod startup;
pub mod unmanaged;
pub mod users;
