//! STUB: replaced by the Nix executors work.
use std::path::PathBuf;

/// Options applied to every Nix call.
#[derive(Debug, Clone, Default)]
pub struct NixOptions {
    pub options: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub bin_dir: Option<PathBuf>,
    pub gc_root_dir: Option<PathBuf>,
    pub machine_id_attr: String,
}

/// A detected Nix version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NixVersion(pub u32, pub u32, pub u32);
