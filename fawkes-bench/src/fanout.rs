//! The `fanout` scenario (being written).

/// Options of the `fanout` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the scenario.
///
/// # Errors
///
/// Always, until it is written.
pub async fn run(_args: Args) -> Result<(), String> {
    Err("the fanout scenario is not written yet".into())
}
