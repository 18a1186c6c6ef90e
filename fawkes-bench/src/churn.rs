//! The `churn` scenario (being written).

/// Options of the `churn` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the scenario.
///
/// # Errors
///
/// Always, until it is written.
pub async fn run(_args: Args) -> Result<(), String> {
    Err("the churn scenario is not written yet".into())
}
