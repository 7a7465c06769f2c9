//! The notification agent as a runtime worker.
//!
//! Input: a transport (a manifold whose output is a [`tidings::Transport`]). No output. The
//! engine's report shows the agent's counters. Definitions that cannot be loaded at the start
//! are fatal (they do not get better by restarting; fix the file and start again); a reload
//! that fails keeps the definitions in use.

use serde_json::json;
use tidings::Transport;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};

use super::{NotificationAgent, NotificationConfig, NotificationError};
use crate::graph;

/// The names of the manifolds the notification agent takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
}

impl Default for NotificationInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
        }
    }
}

/// The notification agent's manifold: started when the transport runs, restarted when it
/// changes, failed (restarted with backoff) when a listener stops on its own.
///
/// ```
/// use tidings_metering::graph;
/// use tidings_metering::notification::{self, NotificationConfig, NotificationInputs};
///
/// let manifold = notification::manifold(NotificationInputs::default(), NotificationConfig::default());
/// assert_eq!(manifold.inputs(), [graph::TRANSPORT]);
/// ```
pub fn manifold(inputs: NotificationInputs, config: NotificationConfig) -> Manifold {
    let input = inputs.transport.clone();
    Manifold::new(move |_ctx, getter| {
        let config = config.clone();
        let transport: Result<Transport, _> = getter.get(&input);
        async move {
            let transport = transport.map_err(|e| WorkerError::missing(e.to_string()))?;
            let agent = NotificationAgent::start(&transport, config)
                .await
                .map_err(|error| match error {
                    NotificationError::Definitions(_) | NotificationError::NothingToListenTo => {
                        WorkerError::fatal(error)
                    }
                    other => WorkerError::failed(other),
                })?;
            let status = agent.status();
            Ok(TaskWorker::spawn(|stop| async move {
                let ended_alone = tokio::select! {
                    () = stop.cancelled() => false,
                    () = agent.stopped() => true,
                };
                agent.stop().await;
                if ended_alone {
                    Err(WorkerError::failed(
                        "the notification agent's listener stopped: transport closed",
                    ))
                } else {
                    Ok(())
                }
            })
            .with_report(move || json!(status.report())))
        }
    })
    .with_inputs([inputs.transport])
}
