//! Small timing helpers shared by the long-lived loops.

use tokio::time::Instant;

/// Sleeps until `t`, or forever when there is no deadline: a `select!` arm
/// for an optional timer (reload coalescing, BIRD retries, drain grace).
pub async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
