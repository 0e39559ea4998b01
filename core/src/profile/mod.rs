//! The profile layer: what a store does ([`metrics`], recorded on every operation) and what it
//! holds ([`inventory`], the data profile behind `piecestore profile`).

pub mod inventory;
pub mod metrics;

pub use inventory::{Inventory, InventoryOptions, ShardInventory};
pub use metrics::{LatencyHistogram, Metrics, Op, OpMetrics, PackWrites};
