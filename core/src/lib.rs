//! PieceStore: immutable piece storage over memory, local disk and S3-compatible object stores.
//!
//! Everything a program does goes through [`PieceStore`], opened from one [`Config`]:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use piecestore::{Config, PieceStore, ErrorKind};
//! let store = PieceStore::open(Config::from_url("memory://")?).await?;
//! store.put("42_s0", &b"hello"[..]).await?;
//! assert_eq!(&store.get("42_s0").await?[..], b"hello");
//! assert_eq!(&store.get_range("42_s0", 1, 3).await?[..], b"ell");
//! assert_eq!(store.get("missing").await.unwrap_err().kind(), ErrorKind::NotFound);
//! # Ok::<_, piecestore::Error>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod bench;
pub mod cache;
pub mod checksum;
pub mod config;
pub mod error;
pub mod greenfield;
pub mod key;
pub mod migrate;
pub mod pack;
mod page_cache;
pub mod peer;
pub mod profile;
mod reserved;
pub mod runtime;
pub mod shard;
mod store;

pub use backend::PieceMeta;
pub use config::{Config, StoreConfig};
pub use error::{Error, ErrorKind, Result};
pub use shard::Placement;
pub use store::{DeleteSummary, PieceStore, PieceStream, PutOptions};

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
