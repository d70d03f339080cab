//! The agent writes only what is its own. Threat: a compromised node uses its agent's service
//! account to forge the status the controller acts on (`roleAssignmentId`, `adopted`,
//! `assigned`, the `Assigned` / `Granted` conditions) and so steer the controller's deletes, or
//! to write the bindings of another node's VM. The chart's ValidatingAdmissionPolicies refuse
//! it, on the sandbox and on a real API server, with the controller and the agent running as the
//! chart's service accounts (on the real server, with TokenRequest tokens, the agent's bound to
//! a pod on its VM's node). An agent credential that names no node (a token bound to no pod, or
//! a static or legacy token without extra fields) may write no binding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::*;
use uami_api::{IdentityBinding, RoleGrant};

const NS: &str = "tutorial";
const GRANT: &str = "my-identity-reads-devtest";
const BINDING: &str = "my-identity-on-myvm";

/// Server-side apply of `status` as the agent does it (forced, its own field manager).
async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"apiVersion": "uami.dev/v1alpha1", "kind": kind, "status": status});
    api.patch_status(
        name,
        &PatchParams::apply("uami-agent").force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// The condition `type_` of an object as JSON (`null` when it has none).
fn cond(v: &Value, type_: &str) -> Value {
    find_by(&v["status"]["conditions"], "type", type_)
}

on_sandbox_and_real! {
    binary: "security_agent",
    options: tutorial_options(Duration::from_secs(30), 0.5),
    join: on_real_apiserver;
    the_agent_cannot_forge_controller_owned_status on_a_real_api_server_the_agent_cannot_forge_controller_owned_status forged_status_is_refused;
}

async fn forged_status_is_refused(
    opts: uami::demo::stack::StackOptions,
    real: Option<&envtest::Real>,
) {
    let stack = enforced_stack(opts).await;
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    // The agent's own writes pass under enforcement: the token and the verified access.
    let grant = ready(&grants(&stack, NS), GRANT, 60).await;
    let binding = ready(&bindings(&stack, NS), BINDING, 60).await;
    let grant = serde_json::to_value(&grant).unwrap();
    let binding = serde_json::to_value(&binding).unwrap();
    assert_eq!(cond(&binding, "TokenAcquired")["status"], "True");
    assert_eq!(cond(&grant, "AccessVerified")["status"], "True");
    let assignment = grant["status"]["roleAssignmentId"]
        .as_str()
        .unwrap()
        .to_string();

    let agent = stack
        .cluster
        .client_for_service_account("uami-system", "uami-agent", Some("myvm"))
        .await
        .unwrap();
    let agent_grants: Api<RoleGrant> = Api::namespaced(agent.clone(), NS);
    let agent_bindings: Api<IdentityBinding> = Api::namespaced(agent.clone(), NS);
    let sub = "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";
    let other = format!(
        "/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments/00000000-0000-0000-0000-000000000bad"
    );

    // Forged controller-owned fields and conditions are refused.
    let mut granted = cond(&grant, "Granted");
    granted["status"] = json!("False");
    granted["reason"] = json!("Forged");
    let mut assigned = cond(&binding, "Assigned");
    assigned["status"] = json!("False");
    #[rustfmt::skip]
    let forged_fields = [
        ("RoleGrant", json!({"roleAssignmentId": other}), "status.roleAssignmentId is written by the controller only"),
        ("RoleGrant", json!({"adopted": true}), "status.adopted is written by the controller only"),
        ("RoleGrant", json!({"conditions": [granted]}), "the Granted, Ready conditions are written by the controller only"),
        ("IdentityBinding", json!({"assigned": false}), "status.assigned is written by the controller only"),
        ("IdentityBinding", json!({"adopted": true}), "status.adopted is written by the controller only"),
        ("IdentityBinding", json!({"conditions": [assigned]}), "the Assigned, Ready conditions are written by the controller only"),
        ("IdentityBinding", json!({"federatedCredentialName": "ci-pipeline"}), "status.federatedCredentialName is written by the controller only"),
        ("IdentityBinding", json!({"access": [{"roleGrant": "x", "scope": "/subscriptions/x", "verified": true}]}), "status.access is written by the controller only"),
    ];
    for (kind, status, needle) in forged_fields {
        let forged = match kind {
            "RoleGrant" => apply_status(&agent_grants, GRANT, kind, status).await,
            _ => apply_status(&agent_bindings, BINDING, kind, status).await,
        };
        denied(forged, 422, needle);
    }
    // A merge patch is held to the same rule.
    let body = json!({"status": {"roleAssignmentId": other}});
    denied(
        merge_patch(&agent_grants, GRANT, true, body).await,
        422,
        "denied request: status.roleAssignmentId is written by the controller only",
    );
    // RBAC: the agent may not write the spec at all.
    let body = json!({"spec": {"role": "Owner"}});
    denied(
        merge_patch(&agent_grants, GRANT, false, body).await,
        403,
        "User \"system:serviceaccount:uami-system:uami-agent\" cannot patch resource \"rolegrants\" in API group \"uami.dev\" in the namespace \"tutorial\"",
    );

    // Its own fields still pass when written by hand: the access and AccessVerified.
    let mut verified = cond(&grant, "AccessVerified");
    verified["message"] = json!("checked again");
    let own = json!({"access": grant["status"]["access"], "conditions": [verified]});
    apply_status(&agent_grants, GRANT, "RoleGrant", own.clone())
        .await
        .unwrap();

    // Another node's agent may not write this VM's binding, not even its own fields.
    let elsewhere: Api<IdentityBinding> = Api::namespaced(
        stack
            .cluster
            .client_for_service_account("uami-system", "uami-agent", Some("othervm"))
            .await
            .unwrap(),
        NS,
    );
    let write = apply_status(
        &elsewhere,
        BINDING,
        "IdentityBinding",
        checked_by("othervm"),
    )
    .await;
    denied(
        write,
        422,
        "the agent on node othervm may write only the bindings of its own VM",
    );

    // An agent credential that names no node writes no binding: a token bound to no pod, and a
    // user without extra fields at all (a static or legacy token; on the real API server the
    // policy must not fail to evaluate for want of `extra`). Its grant fields still pass.
    let unbound = stack
        .cluster
        .client_for_service_account("uami-system", "uami-agent", None)
        .await
        .unwrap();
    let legacy = match real {
        Some(real) => real.static_client("legacy-agent"),
        None => {
            let sb = stack.sandbox().unwrap();
            let user = uami_sandbox::UserInfo::service_account("uami-system", "uami-agent", None);
            assert!(user.extra.is_empty());
            let mut config = kube::Config::new(sb.url().as_str().parse().unwrap());
            config.auth_info.token = Some(secrecy::SecretString::from(sb.token_for(user)));
            kube::Client::try_from(config).unwrap()
        }
    };
    for client in [unbound, legacy] {
        let nodeless: Api<IdentityBinding> = Api::namespaced(client.clone(), NS);
        let write =
            apply_status(&nodeless, BINDING, "IdentityBinding", checked_by("nowhere")).await;
        denied(
            write,
            422,
            "the agent's token names no node (use a token bound to the agent's pod), so it may write no binding",
        );
        let nodeless_grants: Api<RoleGrant> = Api::namespaced(client, NS);
        apply_status(&nodeless_grants, GRANT, "RoleGrant", own.clone())
            .await
            .unwrap();
    }

    // Nothing forged reached the objects.
    let after = serde_json::to_value(grants(&stack, NS).get(GRANT).await.unwrap()).unwrap();
    assert_eq!(after["status"]["roleAssignmentId"], assignment.as_str());
    assert!(after["status"]["adopted"].is_null() || after["status"]["adopted"] == false);
    assert_eq!(cond(&after, "Granted")["status"], "True");
    let after = serde_json::to_value(bindings(&stack, NS).get(BINDING).await.unwrap()).unwrap();
    assert_eq!(after["status"]["assigned"], true);
    assert_eq!(cond(&after, "Assigned")["status"], "True");
    assert_ne!(after["status"]["token"]["checkedBy"], "othervm");
    assert_ne!(after["status"]["token"]["checkedBy"], "nowhere");
    stack.stop().await;
}

/// A binding status naming the ARM token checked by `node`.
fn checked_by(node: &str) -> Value {
    json!({"token": {"resource": "https://management.azure.com/", "checkedBy": node}})
}
