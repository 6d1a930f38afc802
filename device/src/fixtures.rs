//! Where the build put the plugin fixtures, for tests that load them by path.

/// The host-sim plugin as built (tests load it by path, as a vendor plugin would be).
pub const HOST_SIM_PLUGIN: &str = env!("STRATA_HOST_SIM_PLUGIN");
/// The host-sim source stamped with ABI version 999: must be refused.
pub const ABI_MISMATCH_PLUGIN: &str = env!("STRATA_ABI_MISMATCH_PLUGIN");
/// The host-sim source built as an ABI version 1 module (no `copy_batch`): must load, its
/// batches made of single copies.
pub const HOST_SIM_V1_PLUGIN: &str = env!("STRATA_HOST_SIM_V1_PLUGIN");
