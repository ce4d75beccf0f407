//! The one shutdown path: SIGINT, SIGTERM or SIGHUP resolves [`Signals::recv`], and the
//! caller then raises the stop flag that the worker and the server watch. SIGHUP (a closed
//! terminal, say) shuts down like the others, because the service has nothing to reload.
//!
//! The handlers are installed by [`install`], before the store is opened, so a signal that
//! arrives during start-up is kept and handled once the service runs, instead of killing the
//! process by the signal's default action.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGTERM, SIGINT and SIGHUP handlers.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

/// Installs the handlers. Must be called inside the tokio runtime.
pub fn install() -> std::io::Result<Signals> {
    Ok(Signals {
        terminate: signal(SignalKind::terminate())?,
        interrupt: signal(SignalKind::interrupt())?,
        hangup: signal(SignalKind::hangup())?,
    })
}

impl Signals {
    /// Resolves at the first SIGINT, SIGTERM or SIGHUP since [`install`], and returns its name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}
