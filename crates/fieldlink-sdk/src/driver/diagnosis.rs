//! The driver's part in diagnostics: what it knows of each source, and the measures of
//! the windows that are over (the counting itself is `crate::diag`'s).

use std::time::Instant;

use fieldlink_proto::{ClientMsg, Role};

use super::Driver;

impl Driver {
    pub(super) fn source_started(&mut self, stream: u32, fps: f64, kbps: Option<u32>) {
        if let Some(info) = self.meter.info.get_mut(stream as usize) {
            info.fps = Some(fps);
            info.kbps = kbps;
        }
    }

    /// Once a second: the network paths' figures, to the application and to the running
    /// diagnoses (nothing with one path).
    pub(super) fn paths_tick(&mut self, peer: &mut crate::peer::Peer) {
        if let Some(p) = peer.path_figures() {
            let measures: Vec<_> = p.iter().map(crate::PathFigures::measure).collect();
            self.meter.paths_sample(&measures);
            self.ev.emit(crate::Event::Paths(p));
        }
    }

    /// The diagnosis windows that are over: their measures, to send to the server.
    pub(super) fn diag_reports(&mut self) -> Vec<ClientMsg> {
        let now = Instant::now();
        let estimate = self
            .shared
            .estimate_bps
            .load(std::sync::atomic::Ordering::Relaxed);
        let estimate_kbps = (estimate > 0).then_some((estimate / 1000) as u32);
        self.meter
            .take_due(now)
            .into_iter()
            .map(|f| {
                let mut field = Vec::new();
                let mut remote = Vec::new();
                for (id, m) in &f.items {
                    match self.role {
                        Role::Field => {
                            field.push(self.meter.field_measure(*id, m, estimate_kbps, now))
                        }
                        Role::Remote => {
                            remote.push(crate::diag::remote_measure(*id, m, self.cfg.decode))
                        }
                    }
                }
                ClientMsg::DiagReport {
                    req: None,
                    diag: f.diag,
                    field,
                    remote,
                    // The report is of the field device's paths.
                    paths: if self.role == Role::Field {
                        f.paths
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }
}

/// Sleeps until `at`, or forever without one (a `select!` branch that never fires).
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
