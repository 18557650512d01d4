//! A real [`Publisher`] driving one BIRD for a test: desired announcements
//! in through a `watch` channel, [`BirdStatus`] out, waits bounded in time.

use std::time::Duration;

use lb_agent::bird::{BirdStatus, DesiredAnnouncements, Publisher, PublisherOptions};
use lb_agent::config::BirdConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running publisher for one LB; stopped by [`Driver::stop`] (or aborted
/// with the runtime when a test panics).
pub struct Driver {
    pub tx: watch::Sender<DesiredAnnouncements>,
    pub status: watch::Receiver<BirdStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Driver {
    pub fn start(
        cfg: &BirdConfig,
        opts: PublisherOptions,
        initial: DesiredAnnouncements,
    ) -> Driver {
        let (tx, rx) = watch::channel(initial);
        let (status_tx, status) = watch::channel(BirdStatus::default());
        let cancel = CancellationToken::new();
        let publisher = Publisher::new(cfg, opts).unwrap();
        let task = tokio::spawn(publisher.run(rx, status_tx, cancel.clone()));
        Driver {
            tx,
            status,
            cancel,
            task,
        }
    }

    pub async fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&BirdStatus) -> bool,
    ) -> BirdStatus {
        let r = tokio::time::timeout(limit, self.status.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "timed out ({limit:?}) waiting for {what}; status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Waits until BIRD is confirmed to run `want`.
    pub async fn wait_announced(&mut self, want: &DesiredAnnouncements) -> BirdStatus {
        self.wait("confirmation", Duration::from_secs(5), |s| {
            s.ok && s.announced.as_ref() == Some(want)
        })
        .await
    }

    /// Sends `want` and waits until BIRD is confirmed to run it.
    pub async fn publish(&mut self, want: &DesiredAnnouncements) -> BirdStatus {
        self.tx.send(want.clone()).unwrap();
        self.wait_announced(want).await
    }

    pub async fn stop(self) -> BirdStatus {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("publisher stops within 5 s")
            .unwrap();
        let s = self.status.borrow().clone();
        s
    }
}
