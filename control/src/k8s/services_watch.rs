//! The agent's watch of Services and EndpointSlices: two reflector stores; a short
//! debounce after the last change they become one [`ServiceTable`]
//! (`services::service_specs`, then `ServiceTable::build`), handed to the control
//! loop, which publishes it in the next snapshot.
//!
//! ```text
//!  API server ──watch Services────────► reflector store ─┐
//!  API server ──watch EndpointSlices──► reflector store ─┤ 100 ms after the last
//!                                                        │ change, both listed
//!                                                        ▼
//!                               services::service_specs → ServiceTable::build
//!                                                        │ when the specs changed
//!                                                        ▼
//!                          watch::Sender<Arc<ServiceTable>> ──► control loop
//!                                                               (Agent::apply_services)
//! ```
//!
//! Nothing is sent until both lists have arrived: a table built from Services
//! without their slices would reject every ClusterIP for a moment. When the API
//! server is gone the watches retry with back-off and the dataplane keeps the last
//! table (Services are not persisted: after a restart without the API server, pods
//! reach no Service until it is back — unlike node routes, they change too often to
//! be worth a stale copy on disk).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hybridway_dataplane::tables::ServiceTable;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::services::service_specs;

/// How long changes settle before one rebuild (an endpoint controller writes a
/// Service's slices in bursts).
const SETTLE: Duration = Duration::from_millis(100);

/// The Service tables the watch publishes.
pub type ServiceUpdates = watch::Receiver<Arc<ServiceTable>>;

/// Watches Services and EndpointSlices until the receiver is gone. Never returns an
/// error: the API server being away is a state, retried with back-off.
pub async fn run(client: kube::Client, node_name: String, tx: watch::Sender<Arc<ServiceTable>>) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let mut svc_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|s| s.managed_fields_mut().clear())
    .reflect(svc_writer)
    .boxed();
    let mut slice_events = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|s| s.managed_fields_mut().clear())
    .reflect(slice_writer)
    .boxed();
    let mut listed = (false, false);
    let mut due: Option<tokio::time::Instant> = None;
    let mut last = None;
    let mut api_down = false;
    loop {
        let sleep = async {
            match due {
                Some(at) if listed == (true, true) => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            ev = svc_events.next() => ev.map(|e| e.map(|e| (true, is_listed(&e)))),
            ev = slice_events.next() => ev.map(|e| e.map(|e| (false, is_listed(&e)))),
            () = sleep => {
                due = None;
                api_down = false;
                let specs = service_specs(
                    &node_name,
                    services.state().iter().map(|s| &**s),
                    slices.state().iter().map(|s| &**s),
                );
                if last.as_ref() == Some(&specs) {
                    continue;
                }
                let table = ServiceTable::build(&specs);
                tracing::info!(
                    services = specs.len(),
                    frontends = table.len(),
                    skipped = table.skipped(),
                    "service table changed"
                );
                last = Some(specs);
                if tx.send(Arc::new(table)).is_err() {
                    return;
                }
                continue;
            }
        };
        match event {
            None => return,
            Some(Err(e)) => {
                if !api_down {
                    tracing::warn!(error = %e, "Service/EndpointSlice watch failed; forwarding with the last service table, retrying with back-off");
                }
                api_down = true;
            }
            Some(Ok((from_services, done))) => {
                if from_services {
                    listed.0 |= done;
                } else {
                    listed.1 |= done;
                }
                due.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
        }
    }
}

/// Whether the event completes a (re-)list.
fn is_listed<K>(e: &watcher::Event<K>) -> bool {
    matches!(e, watcher::Event::InitDone)
}
