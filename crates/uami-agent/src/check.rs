//! One binding's check: its token through IMDS, then each scope the controller listed in its
//! status read with the identity's token where the grant's role acts (ARM, or a data plane,
//! each with a token for its audience). What the check found is sorted into definitive
//! answers, which change `TokenAcquired` and `AccessVerified`, and passing failures, which keep
//! the last verified result, are noted in `lastCheckError` and retried with backoff.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::report::{AccessReport, TokenReport};
use super::{Agent, CheckFailure, Reported};
use uami_api::binding::AccessCheck;
use uami_api::conditions::{self, Reason, types};
use uami_api::{IdentityBinding, RoleGrant};

/// The wait after the `n`-th passing failure in a row: 1 s doubling, up to the interval (the
/// scheduler then leaves it to the interval's pass).
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(10))
}

impl Agent {
    /// Check binding `b`; the wait before it should be checked again sooner than the interval
    /// (a backoff after a passing failure, a denial that may yet propagate, a token renewal).
    pub(super) async fn check(&self, b: &IdentityBinding) -> Option<Duration> {
        let status = b.status.as_ref()?;
        let ours = status
            .target_resource_id
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(&self.me.target_id()));
        // The label is an index; the target in status, which only the controller writes, is
        // what makes a binding this agent's.
        if !ours || b.meta().deletion_timestamp.is_some() {
            return None;
        }
        // The controller writes the client id once Azure has the identity.
        let client_id = status.client_id.clone()?;
        let key = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
        if !conditions::is_true(&status.conditions, types::ASSIGNED) {
            // A token reported before stays until the controller has said "not assigned" for
            // longer than an assignment takes to settle: a moment of `Assigning` (a drift being
            // repaired) is no reason to withdraw it.
            let since = conditions::find(&status.conditions, types::ASSIGNED)
                .map(|c| c.last_transition_time.0)
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            let settled = k8s_openapi::jiff::Timestamp::now().duration_since(since)
                >= k8s_openapi::jiff::SignedDuration::try_from(
                    self.settings.assignment_propagation,
                )
                .unwrap_or_default();
            if !settled {
                return Some(self.settings.assignment_propagation);
            }
            if conditions::is_true(&status.conditions, types::TOKEN_ACQUIRED) {
                let report = TokenReport::failed(
                    Reason::IdentityNotAssigned.as_str(),
                    "the controller reports the identity not assigned to this target",
                );
                self.write_token(b, report).await;
            }
            return None;
        }
        let resource = &b.spec.token_check.resource;
        let mut next = match self.token(&client_id, resource).await {
            (Ok(_), Some(e)) => {
                // The cached token still works; IMDS's failure is noted beside it.
                self.write_token(b, TokenReport::passing(&e)).await;
                Some(self.passing_failure(&key))
            }
            (Ok(t), None) => {
                self.failures.lock().remove(&key);
                self.write_token(b, TokenReport::acquired(&t)).await;
                self.renewal_in(&client_id, resource)
            }
            (Err(e), _) => {
                let wait = self.passing_failure(&key);
                let report = if e.not_assigned()
                    && self.missing_for(&client_id) >= self.settings.assignment_propagation
                {
                    TokenReport::failed(&e.reason, &e.message)
                } else {
                    TokenReport::passing(&e)
                };
                self.write_token(b, report).await;
                return Some(wait);
            }
        };
        if status.access_checks.is_empty() {
            return next;
        }
        let ns = b.namespace().unwrap_or_default();
        let mut tokens: HashMap<&'static str, Option<SecretString>> = HashMap::new();
        for check in &status.access_checks {
            let audience = super::audience(check.plane);
            let mut wait = None;
            if !tokens.contains_key(audience) {
                let token = match self.token(&client_id, audience).await {
                    (Ok(t), _) => Some(t.secret),
                    // No token for this audience now: the last verified results stay.
                    (Err(_), _) => {
                        wait = Some(self.passing_failure(&key));
                        None
                    }
                };
                tokens.insert(audience, token);
            }
            if let Some(token) = tokens.get(audience).and_then(Option::as_ref) {
                wait = self.check_access(&ns, &client_id, check, token).await;
            }
            if let Some(wait) = wait {
                next = Some(next.map_or(wait, |n: Duration| n.min(wait)));
            }
        }
        next
    }

    /// The backoff after one more passing failure of `key`.
    fn passing_failure(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(key.to_string()).or_default();
        *n += 1;
        backoff(*n - 1)
    }

    /// Read `check.scope` with the identity's token, unless a definitive answer is fresh, and
    /// report a changed answer on the grant; the wait before the next read when it should come
    /// sooner than the interval.
    async fn check_access(
        &self,
        ns: &str,
        client_id: &str,
        check: &AccessCheck,
        token: &SecretString,
    ) -> Option<Duration> {
        let grant_key = format!("{ns}/{}", check.role_grant);
        let last = self.access.lock().get(&grant_key).cloned();
        let same = |r: &Reported| {
            r.client_id == client_id && r.scope == check.scope && r.plane == check.plane
        };
        if let Some(r) = last.as_ref().filter(|r| same(r))
            && r.answer == Ok(200)
            && r.at.elapsed() < self.settings.recheck
        {
            return None;
        }
        let answer = {
            let _permit = self.probes.acquire().await.ok()?;
            self.probe.probe(check, token).await
        };
        let passing = match &answer {
            Ok(code) => *code == 408 || *code == 429 || *code >= 500,
            Err(e) => e.passing(),
        };
        let retry_key = format!("grant/{grant_key}");
        if passing {
            // The grant now shows the failure: the next answer is written whatever it is.
            self.access.lock().remove(&grant_key);
            let message = match &answer {
                Ok(code) => format!(
                    "HTTP {code} reading {} ({})",
                    check.scope,
                    check.plane.as_str()
                ),
                Err(e) => e.message.clone(),
            };
            self.write_access(
                ns,
                check,
                AccessReport::Passing(CheckFailure {
                    reason: Reason::CheckFailed.as_str().into(),
                    message,
                }),
            )
            .await;
            return Some(self.passing_failure(&retry_key));
        }
        self.failures.lock().remove(&retry_key);
        let definitive: Result<u16, String> = answer.map_err(|e| e.reason);
        let unchanged = last
            .as_ref()
            .is_some_and(|r| same(r) && r.answer == definitive);
        let reported = unchanged || {
            let report = match &definitive {
                Ok(code) => AccessReport::Answered(*code),
                Err(reason) => AccessReport::Failed(CheckFailure {
                    reason: reason.clone(),
                    message: format!("{} cannot be read by the access check", check.scope),
                }),
            };
            self.write_access(ns, check, report).await
        };
        if reported {
            self.access.lock().insert(
                grant_key,
                Reported {
                    client_id: client_id.to_string(),
                    scope: check.scope.clone(),
                    plane: check.plane,
                    answer: definitive.clone(),
                    at: Instant::now(),
                },
            );
        }
        // A denial may be a role assignment still on its way: read again soon, backing off.
        match definitive {
            Ok(401 | 403) => Some(self.passing_failure(&retry_key)),
            _ => None,
        }
    }

    /// Report on grant `check.role_grant` when it still grants `check.scope` with
    /// `verifyAccess`; whether the report is in its status.
    async fn write_access(&self, ns: &str, check: &AccessCheck, report: AccessReport) -> bool {
        let api: Api<RoleGrant> = Api::namespaced(self.client.clone(), ns);
        let grant = match api.get_opt(&check.role_grant).await {
            Ok(Some(g)) => g,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(grant = %check.role_grant, namespace = %ns, error = %e, "could not read grant");
                return false;
            }
        };
        let grants_it = grant.spec.verify_access
            && grant.meta().deletion_timestamp.is_none()
            && grant.status.as_ref().is_some_and(|s| {
                s.scope.as_deref() == Some(check.scope.as_str())
                    && conditions::is_true(&s.conditions, types::GRANTED)
            });
        if !grants_it {
            return false;
        }
        match self.write_grant(&grant, check, report).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(grant = %check.role_grant, namespace = %ns, error = %e, "could not write grant status");
                false
            }
        }
    }

    async fn write_token(&self, b: &IdentityBinding, report: TokenReport) {
        if let Err(e) = self.write_binding(b, report).await {
            tracing::warn!(binding = %b.name_any(), namespace = ?b.namespace(), error = %e, "could not write binding status");
        }
    }
}
