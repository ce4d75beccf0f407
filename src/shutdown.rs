//! The one shutdown path: SIGINT or SIGTERM resolves [`Signals::recv`], and the caller then
//! raises the stop flag that the worker and the server watch.
//!
//! The handlers are installed by [`install`], before the store is opened, so a signal that
//! arrives during start-up is kept and handled once the service runs, instead of killing the
//! process by the signal's default action.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGTERM and SIGINT handlers.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

/// Installs the handlers. Must be called inside the tokio runtime.
pub fn install() -> std::io::Result<Signals> {
    Ok(Signals {
        terminate: signal(SignalKind::terminate())?,
        interrupt: signal(SignalKind::interrupt())?,
    })
}

impl Signals {
    /// Resolves at the first SIGINT or SIGTERM since [`install`], and returns its name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
