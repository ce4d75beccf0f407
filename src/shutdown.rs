//! The one shutdown path: SIGINT or SIGTERM resolves [`signal`], and the caller then raises the
//! stop flag that the worker and the server watch.

/// Resolves at the first SIGINT or SIGTERM, and returns the signal's name.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installing a handler fails only when the runtime has no signal driver, which the
        // multi-threaded runtime built in main always has.
        let mut terminate =
            signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
