//! What both binaries (`piko-server` and `piko`) share about running as a process: the async
//! runtime they build and what the first and the second stop signal do.

/// Exit code after a second SIGINT/SIGTERM: the first asks for a graceful stop, the second
/// exits at once with the shell's code for "interrupted" (128 + SIGINT), in both binaries.
pub const SECOND_SIGNAL_EXIT: i32 = 130;

/// Build the multi-threaded runtime; `PIKO_WORKER_THREADS` pins its size (default: one worker
/// per core), which benchmarks and small devices use.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("PIKO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// Call `first` on the first SIGINT or SIGTERM (Ctrl-C off Unix), then exit the process with
/// [`SECOND_SIGNAL_EXIT`] on the second. `first` starts the graceful stop; it should cancel
/// before it logs, so a closed stderr cannot stand in the way.
pub async fn stop_on_signals(first: impl FnOnce()) {
    wait_for_signal().await;
    first();
    wait_for_signal().await;
    tracing::warn!("second signal; exiting at once");
    std::process::exit(SECOND_SIGNAL_EXIT);
}

/// Wait for one SIGINT or SIGTERM; if SIGTERM cannot be watched, Ctrl-C alone.
#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Wait for one Ctrl-C.
#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
