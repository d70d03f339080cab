//! Table tests of the binding plan: observed state in, actions and status out.

use std::time::Duration;

use serde_json::json;

use super::ASSIGNED_ANNOTATION;
use super::plan::*;
use crate::azure_identity::AzureIdentity;
use crate::fixtures::{condition, policies};
use crate::memo::Fingerprint;
use crate::outcome::{Next, Report};
use crate::reasons;
use uami_api::conditions::{self, types};
use uami_api::{GrantPolicy, IdentityBinding, IdentityBindingStatus, UserAssignedIdentity};
use uami_azure::federated::IdentityCoordinates;

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id";

fn binding(status: Option<serde_json::Value>, recorded: bool) -> IdentityBinding {
    let mut b = json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
        "metadata": {"name": "b", "namespace": "team", "generation": 3},
        "spec": {"identityRef": {"name": "id"},
            "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}},
    });
    if let Some(s) = status {
        b["status"] = s;
    }
    if recorded {
        b["metadata"]["annotations"] = json!({ ASSIGNED_ANNOTATION: ID });
    }
    serde_json::from_value(b).unwrap()
}

fn identity(ready: bool) -> UserAssignedIdentity {
    serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": "id", "namespace": "team"},
        "spec": {"resourceGroup": "DevTest", "location": "eastus"},
        "status": {"resourceId": ID, "conditions": [
            condition("Ready", if ready { "True" } else { "False" }, "Ready")]},
    }))
    .unwrap()
}

/// The identity as Azure has it, for an identity whose status shows it: the test's stand-in for
/// what the controller read from ARM.
fn azure(identity: Option<&UserAssignedIdentity>) -> Option<AzureIdentity> {
    let id = identity?.status.as_ref()?.resource_id.clone()?;
    Some(AzureIdentity {
        coordinates: IdentityCoordinates::from_id(&id)?,
        id,
        client_id: "c".into(),
        principal_id: "p".into(),
        tenant_id: "t".into(),
        replaced_principal_id: None,
    })
}

fn allow_vm() -> Vec<GrantPolicy> {
    policies(json!({"identityBindings": [
        {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}]}))
}

fn get(status: &IdentityBindingStatus, type_: &str) -> Option<(String, String)> {
    conditions::find(&status.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

fn ensure_of(b: &IdentityBinding) -> Ensure {
    match plan(
        b,
        Some(SUB),
        &allow_vm(),
        Some(&identity(true)),
        azure(Some(&identity(true))).as_ref(),
        |_| false,
    ) {
        Plan::Ensure(e) => e,
        other => panic!("not ensured: {other:?}"),
    }
}

/// (binding, default subscription, policies, identity) -> (Ready reason, next look).
type Case<'a> = (
    IdentityBinding,
    Option<&'a str>,
    Vec<GrantPolicy>,
    Option<&'a UserAssignedIdentity>,
    &'a str,
    Next,
);

#[test]
fn plans_from_target_policy_and_identity() {
    let never = |_: Fingerprint| false;
    let ready = identity(true);
    let not_ready = identity(false);
    let with_status = || binding(Some(json!({"observedGeneration": 1})), false);
    let cases: Vec<Case> = vec![
        (
            binding(None, false),
            None,
            allow_vm(),
            Some(&ready),
            reasons::NO_SUBSCRIPTION,
            Next::AwaitChange,
        ),
        (
            binding(None, false),
            Some(SUB),
            allow_vm(),
            None,
            reasons::IDENTITY_NOT_FOUND,
            Next::Resync,
        ),
        (
            with_status(),
            Some(SUB),
            allow_vm(),
            Some(&not_ready),
            reasons::WAITING_FOR_IDENTITY,
            Next::Resync,
        ),
    ];
    for (b, sub, policies, id, reason, next) in cases {
        match plan(&b, sub, &policies, id, azure(id).as_ref(), never) {
            Plan::Report(Report {
                status: Some(status),
                note: None,
                next: got,
            }) => {
                assert_eq!(get(&status, types::READY).unwrap().1, reason);
                assert_eq!(got, next, "{reason}");
            }
            other => panic!("{reason}: {other:?}"),
        }
    }
    // Nothing allows it: revoke.
    assert!(matches!(
        plan(
            &binding(None, false),
            Some(SUB),
            &[],
            Some(&ready),
            azure(Some(&ready)).as_ref(),
            never
        ),
        Plan::Revoke { .. }
    ));
    // A new binding of an identity being created: nothing to write yet.
    let creating: UserAssignedIdentity = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": "id", "namespace": "team"},
        "spec": {"resourceGroup": "DevTest", "location": "eastus"}}))
    .unwrap();
    assert_eq!(
        plan(
            &binding(None, false),
            Some(SUB),
            &allow_vm(),
            Some(&creating),
            azure(Some(&creating)).as_ref(),
            never
        ),
        Plan::Report(Report::quiet())
    );
    // Allowed and ready: ensure, with drift noticed when it was assigned before.
    let e = ensure_of(&binding(None, false));
    assert_eq!(e.identity_id, ID);
    assert!(!e.assigned_before);
    assert!(e.target.id().ends_with("/virtualMachines/myVM"));
    // Assigned and checked moments ago: status only; Ready follows the agent's token.
    let assigned = binding(
        Some(json!({"assigned": true, "adopted": false,
            "conditions": [condition("TokenAcquired", "True", "TokenAcquired")]})),
        true,
    );
    // Planned with the identity ready and the target checked moments ago.
    let checked = |b: &IdentityBinding| {
        plan(
            b,
            Some(SUB),
            &allow_vm(),
            Some(&ready),
            azure(Some(&ready)).as_ref(),
            |_| true,
        )
    };
    match checked(&assigned) {
        Plan::Report(Report {
            status: Some(status),
            note: None,
            next: Next::Resync,
        }) => {
            assert_eq!(get(&status, types::ASSIGNED).unwrap().0, "True");
            assert_eq!(
                get(&status, types::READY).unwrap(),
                ("True".into(), reasons::READY.into())
            );
            // The agent's condition stays the agent's.
            assert_eq!(get(&status, types::TOKEN_ACQUIRED), None);
        }
        other => panic!("{other:?}"),
    }
    // Status is not evidence: `adopted` follows the record, whatever the status claims.
    for (claimed, recorded) in [(true, true), (false, false)] {
        let forged = binding(
            Some(json!({"assigned": true, "adopted": claimed})),
            recorded,
        );
        match checked(&forged) {
            Plan::Report(Report {
                status: Some(status),
                ..
            }) => assert_eq!(status.adopted, Some(!recorded), "recorded: {recorded}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn settles_what_the_writer_and_arm_found() {
    // A binding that shows a wait: being assigned is news.
    let waiting = condition("Ready", "False", reasons::WAITING_FOR_IDENTITY);
    let b = binding(Some(json!({"conditions": [waiting]})), false);
    let e = ensure_of(&b);
    // A binding without a status writes none while its first write is pending: its first
    // status is the result.
    let fresh = binding(None, false);
    for found in [Found::Pending, Found::Submit { drift: false }] {
        let report = settle(&fresh, &ensure_of(&fresh), &found);
        assert_eq!(report.status, None, "{found:?}");
        assert_eq!(report.next, Next::Resync, "{found:?}");
    }
    // (found) -> (Assigned, Ready reason, adopted, Event action, next look)
    let cases = [
        (
            Found::Assigned {
                ours: true,
                added: true,
            },
            (
                "True",
                reasons::AWAITING_TOKEN,
                Some(false),
                Some("AssignIdentity"),
                Next::Resync,
            ),
        ),
        (
            Found::Assigned {
                ours: false,
                added: false,
            },
            (
                "True",
                reasons::AWAITING_TOKEN,
                Some(true),
                None,
                Next::Resync,
            ),
        ),
        (
            Found::TargetNotFound,
            (
                "False",
                reasons::TARGET_NOT_FOUND,
                None,
                Some("GetTarget"),
                Next::Resync,
            ),
        ),
        (
            Found::Pending,
            ("False", reasons::ASSIGNING, None, None, Next::Resync),
        ),
        (
            Found::Submit { drift: true },
            (
                "False",
                reasons::ASSIGNING,
                None,
                Some("AssignIdentity"),
                Next::Resync,
            ),
        ),
        (
            Found::Failed {
                code: "Conflict".into(),
                message: "busy".into(),
                retryable: false,
                retry_after: None,
                attempts: 1,
            },
            (
                "False",
                "Conflict",
                None,
                Some("AssignIdentity"),
                Next::Resync,
            ),
        ),
    ];
    for (found, (assigned, reason, adopted, action, next)) in cases {
        let Report {
            status,
            note,
            next: got,
        } = settle(&b, &e, &found);
        let status = status.unwrap();
        assert_eq!(
            get(&status, types::ASSIGNED).unwrap().0,
            assigned,
            "{found:?}"
        );
        assert_eq!(get(&status, types::READY).unwrap().1, reason, "{found:?}");
        assert_eq!(status.adopted, adopted, "{found:?}");
        assert_eq!(note.map(|n| n.action), action, "{found:?}");
        assert_eq!(got, next, "{found:?}");
        assert!(status.target_resource_id.unwrap().ends_with("/myVM"));
    }
    let Report { next, .. } = settle(
        &b,
        &e,
        &Found::Failed {
            code: "Throttled".into(),
            message: "slow down".into(),
            retryable: true,
            retry_after: Some(Duration::from_secs(7)),
            attempts: 1,
        },
    );
    assert!(matches!(next, Next::After(d) if d >= Duration::from_secs(7)));
}

#[test]
fn revocation_reports_what_was_taken_back() {
    let b = binding(Some(json!({"assigned": true, "adopted": false})), true);
    let target = ensure_of(&b).target;
    let Report { status, note, next } = revoked(&b, &target, "denied", Some(Removal::Gone));
    let status = status.unwrap();
    assert_eq!((status.assigned, status.adopted), (Some(false), None));
    assert_eq!(note.unwrap().action, "RevokeAssignment");
    assert_eq!(next, Next::AwaitChange);
    let Report { status, note, next } = revoked(&b, &target, "denied", Some(Removal::Pending));
    let status = status.unwrap();
    assert_eq!(status.assigned, Some(true));
    assert_eq!((note, next), (None, Next::After(Duration::from_secs(30))));
    // Nothing recorded: nothing was ours, and the old summary goes.
    let unrecorded = binding(Some(json!({"assigned": true, "adopted": true})), false);
    let Report { status, note, .. } = revoked(&unrecorded, &target, "denied", None);
    let status = status.unwrap();
    assert_eq!((status.assigned, status.adopted), (None, None));
    assert_eq!(
        get(&status, types::READY).unwrap().1,
        reasons::DENIED_BY_POLICY
    );
    assert_eq!(note.unwrap().action, "CheckPolicy");
}

#[test]
fn the_identity_assigned_is_azures_not_the_status() {
    let forged: UserAssignedIdentity = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": "id", "namespace": "team"},
        "spec": {"resourceGroup": "DevTest", "location": "eastus"},
        "status": {"resourceId": ID.replace("/id", "/someone-else"),
            "conditions": [condition("Ready", "True", "Ready")]},
    }))
    .unwrap();
    let azure = azure(Some(&identity(true)));
    let b = binding(None, false);
    match plan(
        &b,
        Some(SUB),
        &allow_vm(),
        Some(&forged),
        azure.as_ref(),
        |_| false,
    ) {
        Plan::Ensure(e) => assert_eq!(e.identity_id, ID),
        other => panic!("not ensured: {other:?}"),
    }
    // Not (yet) known in Azure as this identity's: nothing is assigned.
    assert!(matches!(
        plan(&b, Some(SUB), &allow_vm(), Some(&forged), None, |_| false),
        Plan::Report(_)
    ));
}
