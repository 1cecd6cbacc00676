//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go does it.
//!
//! Expiry is judged by *our* clock: a candidate remembers when it first saw the
//! holder's current `renewTime` and takes over only after that record has stood
//! unchanged for the lease duration, so clock skew between replicas does not matter.
//! Every write is a replace carrying the `resourceVersion` that was read, so of two
//! candidates racing for an expired lease exactly one wins (the other gets 409).
//!
//! The leader renews every `retry_period`; if it has not managed to renew within
//! `renew_deadline` (shorter than the lease duration) it gives up leadership before
//! anybody else may take it, which is what makes "a leader that loses its lease stops
//! writing" hold.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// Failures talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Timing of the election (client-go's defaults are 15 s / 10 s / 2 s).
#[derive(Clone, Debug)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Leading,
    /// Someone else holds a lease that has not expired by our clock.
    Following,
}

/// One candidate.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The other holder's record as last seen, and when we first saw it.
    observed: Option<(String, Option<MicroTime>, Instant)>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> &LeaseTiming {
        &self.timing
    }

    /// Acquires the lease if it is free or expired, renews it if it is ours.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.our_spec(now, 0, Some(MicroTime(now)))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(e) if is_conflict(&e) => Ok(Attempt::Following),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && !self.expired(&holder, &spec) {
            return Ok(Attempt::Following);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.our_spec(now, transitions, spec.acquire_time.clone())
        } else {
            self.our_spec(now, transitions.saturating_add(1), Some(MicroTime(now)))
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(Attempt::Leading)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Following),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Hands the lease back (planned shutdown) so a follower need not wait for expiry.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Whether the other holder's record has stood unchanged for its duration.
    fn expired(&mut self, holder: &str, spec: &LeaseSpec) -> bool {
        let now = Instant::now();
        let same =
            matches!(&self.observed, Some((h, r, _)) if h == holder && *r == spec.renew_time);
        if !same {
            self.observed = Some((holder.to_string(), spec.renew_time.clone(), now));
            return false;
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.lease_duration, Duration::from_secs);
        self.observed
            .as_ref()
            .is_some_and(|(_, _, seen)| now.duration_since(*seen) >= duration)
    }

    fn our_spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: acquired,
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.api.namespace().unwrap_or_default().to_string(),
            name: self.name.clone(),
            source,
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Renews until a renewal has not succeeded for `renew_deadline` or another holder
/// shows up; returns why leadership ended.
pub async fn hold(elector: &mut LeaderElector) -> String {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(elector.timing.retry_period).await;
        // A request that hangs must not keep us "leading" past the deadline.
        let left = elector
            .timing
            .renew_deadline
            .saturating_sub(last_ok.elapsed());
        let why = match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Leading)) => {
                last_ok = Instant::now();
                continue;
            }
            Ok(Ok(Attempt::Following)) => return "another replica holds the lease".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the API server did not answer".to_string(),
        };
        tracing::warn!(error = %why, "renewing the leader lease failed");
        if last_ok.elapsed() >= elector.timing.renew_deadline {
            return format!(
                "could not renew the lease within {:?}: {why}",
                elector.timing.renew_deadline
            );
        }
    }
}
