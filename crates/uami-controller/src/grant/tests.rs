//! Table tests of the grant plan: observed state in, actions and status out.

use std::time::Duration;

use serde_json::json;

use super::plan::*;
use crate::azure_identity::AzureIdentity;
use crate::fixtures::{condition, policies};
use crate::memo::Fingerprint;
use crate::outcome::{Next, Report};
use crate::reasons;
use uami_api::conditions::{self, types};
use uami_api::{GrantPolicy, RoleGrant, RoleGrantStatus, UserAssignedIdentity};
use uami_azure::federated::IdentityCoordinates;
use uami_azure::roles::{RoleAssignment, RoleDefinition};

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn grant(scope: serde_json::Value, status: Option<serde_json::Value>) -> RoleGrant {
    let mut g = json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
        "metadata": {"name": "g", "namespace": "team", "generation": 2},
        "spec": {"identityRef": {"name": "id"}, "role": "Reader", "scope": scope},
    });
    if let Some(s) = status {
        g["status"] = s;
    }
    serde_json::from_value(g).unwrap()
}

fn devtest() -> serde_json::Value {
    json!({"resourceGroup": {"name": "DevTest"}})
}

fn identity(principal: Option<&str>) -> UserAssignedIdentity {
    let mut i = json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": "id", "namespace": "team"},
        "spec": {"resourceGroup": "DevTest", "location": "eastus"},
    });
    if let Some(p) = principal {
        i["status"] = json!({"principalId": p});
    }
    serde_json::from_value(i).unwrap()
}

/// The identity as Azure has it, for an identity whose status shows a principal: the test's
/// stand-in for what the controller read from ARM.
fn azure(identity: Option<&UserAssignedIdentity>) -> Option<AzureIdentity> {
    let principal_id = identity?.status.as_ref()?.principal_id.clone()?;
    Some(AzureIdentity {
        coordinates: IdentityCoordinates::new(SUB, "DevTest", "id"),
        id: String::new(),
        client_id: "c".into(),
        principal_id,
        tenant_id: "t".into(),
        replaced_principal_id: None,
    })
}

fn reader() -> RoleDefinition {
    RoleDefinition {
        id: format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}"
        ),
        name: READER.into(),
        role_name: "Reader".into(),
        data_actions: Vec::new(),
    }
}

fn allow_reader() -> Vec<GrantPolicy> {
    policies(json!({"roleGrants": [
        {"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}]}))
}

fn ready(status: &RoleGrantStatus) -> (String, String) {
    let c = conditions::find(&status.conditions, types::READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

fn report(plan: Plan) -> (Option<RoleGrantStatus>, Option<String>, Next) {
    match plan {
        Plan::Report(Report { status, note, next }) => {
            (status, note.map(|n| n.action.to_string()), next)
        }
        other => panic!("not a report: {other:?}"),
    }
}

fn resolved(g: &RoleGrant) -> Resolved {
    resolve(
        g,
        Some(SUB),
        Some(&identity(Some("p1"))),
        azure(Some(&identity(Some("p1")))).as_ref(),
    )
    .unwrap()
}

#[test]
fn resolving_waits_for_scope_and_identity() {
    // (grant, default subscription, identity) -> (Ready reason, Event action, next look)
    let cases = [
        (
            grant(devtest(), None),
            None,
            Some(identity(Some("p1"))),
            Some((reasons::NO_SUBSCRIPTION, None, Next::AwaitChange)),
        ),
        (
            grant(json!({"resourceId": "/subscriptions/x/../y"}), None),
            Some(SUB),
            Some(identity(Some("p1"))),
            Some((
                reasons::INVALID_SCOPE,
                Some("CheckScope"),
                Next::AwaitChange,
            )),
        ),
        (
            grant(devtest(), None),
            Some(SUB),
            None,
            Some((reasons::IDENTITY_NOT_FOUND, None, Next::Resync)),
        ),
        (
            grant(devtest(), Some(json!({"observedGeneration": 1}))),
            Some(SUB),
            Some(identity(None)),
            Some((reasons::WAITING_FOR_IDENTITY, None, Next::Resync)),
        ),
        (
            grant(devtest(), None),
            Some(SUB),
            Some(identity(Some("p1"))),
            None,
        ),
    ];
    for (g, sub, id, want) in cases {
        let got = resolve(&g, sub, id.as_ref(), azure(id.as_ref()).as_ref());
        match want {
            None => assert_eq!(
                got.unwrap().scope.as_str(),
                format!("/subscriptions/{SUB}/resourceGroups/DevTest")
            ),
            Some((reason, action, next)) => {
                let (status, note, got_next) = report(got.unwrap_err());
                let status = status.unwrap();
                assert_eq!(ready(&status), ("False".into(), reason.into()));
                assert_eq!(
                    conditions::find(&status.conditions, types::GRANTED).map(|c| &c.reason),
                    Some(&reason.to_string())
                );
                assert_eq!(note.as_deref(), action, "{reason}");
                assert_eq!(got_next, next, "{reason}");
            }
        }
    }
    // An identity being created right now wakes the grant itself: no status is written.
    let (status, note, next) = report(
        resolve(
            &grant(devtest(), None),
            Some(SUB),
            Some(&identity(None)),
            azure(Some(&identity(None))).as_ref(),
        )
        .unwrap_err(),
    );
    assert_eq!((status, note, next), (None, None, Next::Resync));
}

#[test]
fn an_invalid_scope_warns_once() {
    let g = grant(
        json!({"resourceId": "/subscriptions/x/../y"}),
        Some(json!({"conditions": [condition("Ready", "False", "InvalidScope")]})),
    );
    let (_, note, _) = report(resolve(&g, Some(SUB), None, None).unwrap_err());
    assert_eq!(note, None);
}

#[test]
fn plans_from_role_policy_and_recent_checks() {
    let g = grant(devtest(), None);
    let never = |_: Fingerprint| false;
    // No such role: a warning and a look at the next resync.
    let (status, note, next) = report(plan(&g, resolved(&g), None, &[], Some(SUB), never));
    assert_eq!(ready(&status.unwrap()).1, reasons::ROLE_NOT_FOUND);
    assert_eq!((note.as_deref(), next), (Some("ResolveRole"), Next::Resync));
    // No policy allows it: revoke, with the scope kept and the assignment forgotten.
    let role = reader();
    match plan(&g, resolved(&g), Some(&role), &[], Some(SUB), never) {
        Plan::Revoke {
            recently, status, ..
        } => {
            assert!(!recently);
            assert_eq!(ready(&status).1, reasons::DENIED_BY_POLICY);
            assert_eq!(status.role_assignment_id, None);
            assert!(status.scope.unwrap().ends_with("/resourceGroups/DevTest"));
        }
        other => panic!("{other:?}"),
    }
    // Allowed: ensure the assignment, under its deterministic name.
    let policies = allow_reader();
    let Plan::Ensure(e) = plan(&g, resolved(&g), Some(&role), &policies, Some(SUB), never) else {
        panic!("not ensured");
    };
    assert!(!e.granted_before && !e.adopted_before);
    assert_eq!(e.expected.guid, READER);
    assert_eq!(
        e.definition_id,
        format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}")
    );
    // Granted and checked moments ago: status only, the assignment id recomputed.
    let granted = grant(
        devtest(),
        Some(json!({"adopted": false, "roleAssignmentId": "/forged",
            "conditions": [condition("Granted", "True", "Granted")]})),
    );
    let always = |_: Fingerprint| true;
    let (status, note, next) = report(plan(
        &granted,
        resolved(&granted),
        Some(&role),
        &policies,
        Some(SUB),
        always,
    ));
    let status = status.unwrap();
    assert_eq!((note, next), (None, Next::Resync));
    assert_eq!(
        status.role_assignment_id,
        Some(assignment_id(
            &format!("/subscriptions/{SUB}/resourceGroups/DevTest"),
            &e.expected.name
        ))
    );
    assert_eq!(
        ready(&status),
        ("False".into(), reasons::AWAITING_ACCESS_CHECK.into())
    );
}

#[test]
fn settles_what_arm_answered() {
    let g = grant(devtest(), None);
    let role = reader();
    let Plan::Ensure(e) = plan(
        &g,
        resolved(&g),
        Some(&role),
        &allow_reader(),
        Some(SUB),
        |_| false,
    ) else {
        panic!("not ensured");
    };
    let Report { status, note, .. } = settle(&g, &e, Found::Created { id: String::new() });
    let status = status.unwrap();
    assert_eq!(status.adopted, Some(false));
    assert!(
        status
            .role_assignment_id
            .unwrap()
            .ends_with(&e.expected.name)
    );
    assert_eq!(note.unwrap().action, "CreateRoleAssignment");
    let taken = RoleAssignment {
        id: "/x/roleAssignments/other".into(),
        name: "other".into(),
        ..Default::default()
    };
    let Report { status, note, .. } = settle(&g, &e, Found::Taken(taken));
    let status = status.unwrap();
    assert_eq!(
        (status.adopted, status.role_assignment_id.as_deref()),
        (Some(true), Some("/x/roleAssignments/other"))
    );
    assert_eq!(note.unwrap().action, "AdoptRoleAssignment");
    let Report { status, note, next } = settle(
        &g,
        &e,
        Found::PrincipalNotFound {
            attempts: 1,
            retry_after: Some(Duration::from_secs(3)),
        },
    );
    let status = status.unwrap();
    assert_eq!(ready(&status).1, reasons::PRINCIPAL_NOT_FOUND);
    assert_eq!(status.principal_id.as_deref(), Some("p1"));
    assert!(note.is_none());
    assert!(matches!(next, Next::After(d) if d >= Duration::from_secs(3)));
    let Report { next, .. } = settle(
        &g,
        &e,
        Found::PrincipalNotFound {
            attempts: PRINCIPAL_NOT_FOUND_ATTEMPTS,
            retry_after: None,
        },
    );
    assert_eq!(next, Next::Resync);
}
