//! Where the controller, the agent and the emulator behave as real ARM does: the body that
//! removes the last user-assigned identity, long-running operations in the `Location` form,
//! paged lists followed through `nextLink`, access checks with each provider's api-version, and
//! error answers reduced to ARM's code and message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "arm_fidelity/resources.rs"]
mod resources;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams};
use resources::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::arm::{Admin, arm_client};
use support::fixtures::{self, Fixture};
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_azure::{RoleApi, api_versions, probe_access};
use uami_emulator::knobs::INNER_ERROR_DUMP;
use uami_emulator::world::{InitialAssignment, TUTORIAL_SUBSCRIPTION};
use uami_emulator::{Emulator, Knobs, LroForm};

const SUB: &str = TUTORIAL_SUBSCRIPTION;
const CONTROLLER: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

/// The request bodies of `operation` in the journal, in order.
fn requests(emulator: &Emulator, operation: &str) -> Vec<Value> {
    emulator
        .journal()
        .into_iter()
        .filter(|e| e.operation == operation)
        .filter_map(|e| e.request)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_user_identity_sends_the_type_alone() {
    // A scale set with a system-assigned identity beside the tutorial's VM without one.
    let stack = web_stack(tutorial_options(Duration::from_secs(60), 0.2)).await;
    eventually(60, "the identity on myVM and web", || async {
        let s = stack.emulator.state();
        (user_assigned(&s, "myVM") == 1 && user_assigned(&s, "web") == 1).then_some(())
    })
    .await;
    let dp = DeleteParams::default();
    let api = bindings(&stack, "tutorial");
    api.delete("my-identity-on-myvm", &dp).await.unwrap();
    api.delete("my-identity-on-web", &dp).await.unwrap();
    let state = eventually(60, "both unassigned", || async {
        let s = stack.emulator.state();
        (user_assigned(&s, "myVM") == 0 && user_assigned(&s, "web") == 0).then_some(s)
    })
    .await;
    assert!(compute(&state, "myVM").get("identity").is_none(), "{state}");
    assert_eq!(compute(&state, "web")["identity"]["type"], "SystemAssigned");
    assert_eq!(
        requests(&stack.emulator, "VirtualMachines_Update").last(),
        Some(&json!({"identity": {"type": "None"}})),
        "ARM-NOTES 2.4: the type alone when only user-assigned identities were present"
    );
    assert_eq!(
        requests(&stack.emulator, "VirtualMachineScaleSets_Update").last(),
        Some(&json!({"identity": {"type": "SystemAssigned"}})),
        "ARM-NOTES 2.4: SystemAssigned alone when a system identity exists"
    );
    let refused = stack.emulator.counts().get("VirtualMachines_Update", 400)
        + stack
            .emulator
            .counts()
            .get("VirtualMachineScaleSets_Update", 400);
    assert_eq!(refused, 0);
    stack.stop().await;
}

#[tokio::test]
async fn compute_refuses_user_identities_next_to_none_or_system_assigned() {
    let emulator = support::arm::tutorial_emulator(|_| {}).await;
    let admin = Admin::of(&emulator);
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/gone"
    );
    for body in [
        json!({"identity": {"type": "None", "userAssignedIdentities": {id.clone(): null}}}),
        json!({"identity": {"type": "SystemAssigned", "userAssignedIdentities": {id.clone(): null}}}),
        json!({"identity": {"type": "None", "userAssignedIdentities": {}}}),
    ] {
        let (status, _, v) = admin.patch_vm("myVM", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["error"]["code"], "InvalidParameter", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("should not be provided"), "{v}");
    }
    let (status, _, v) = admin
        .patch_vm("myVM", json!({"identity": {"type": "None"}}))
        .await;
    assert_eq!(status, 200, "{v}");
    emulator.shutdown().await;
}

/// Compute's updates answer only 200 (their documents list no 202): asking for the `Location`
/// form changes nothing, and the controller polls the `Azure-AsyncOperation` to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_answer_200_whatever_form_is_asked() {
    let mut opts = tutorial_options(Duration::from_secs(60), 0.2);
    opts.world.lro_polls = 2;
    // Set in code, past the check that refuses this knob in a world file or at run time.
    opts.world.knobs = Knobs {
        lro_forms: BTreeMap::from([("VirtualMachines_Update".to_string(), LroForm::Location)]),
        ..Default::default()
    };
    assert!(opts.world.knobs.check().is_err());
    let stack = tutorial_stack(opts).await;
    ready(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING, 60).await;
    assert_eq!(user_assigned(&stack.emulator.state(), "myVM"), 1);
    let counts = stack.emulator.counts();
    assert!(counts.get("VirtualMachines_Update", 200) >= 1, "{counts:?}");
    assert_eq!(counts.get("VirtualMachines_Update", 202), 0, "{counts:?}");
    assert_eq!(counts.total("LocationOperation_Get"), 0, "{counts:?}");
    assert!(counts.total("AsyncOperation_Get") >= 1, "{counts:?}");
    let patched = stack
        .emulator
        .journal()
        .into_iter()
        .find(|e| e.operation == "VirtualMachines_Update" && e.status == 200)
        .and_then(|e| e.response)
        .unwrap();
    assert_eq!(patched["properties"]["provisioningState"], "Updating");
    assert_eq!(
        patched["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(1),
        "the answer is the new model: {patched}"
    );
    stack.stop().await;
}

/// The api-versions the newest published Azure SDKs for Python send by default, read from the
/// wheels (`_configuration.py` and the operations' request builders): (package, a path it
/// calls, its version).
const SDK_DEFAULTS: &[(&str, &str, &str)] = &[
    (
        "azure-mgmt-compute 39.0.0",
        "/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM",
        "2026-04-01",
    ),
    (
        "azure-mgmt-compute 39.0.0",
        "/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachineScaleSets/absent",
        "2026-04-01",
    ),
    (
        "azure-mgmt-msi 7.1.0",
        "/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities",
        "2024-11-30",
    ),
    (
        "azure-mgmt-authorization 4.0.0",
        "/resourceGroups/DevTest/providers/Microsoft.Authorization/roleAssignments",
        "2022-04-01",
    ),
    (
        "azure-mgmt-authorization 4.0.0",
        "/providers/Microsoft.Authorization/roleDefinitions",
        "2022-04-01",
    ),
    (
        "azure-mgmt-resource 26.0.0",
        "/resourcegroups/DevTest",
        "2025-04-01",
    ),
    ("azure-mgmt-resource-subscriptions 1.0.0", "", "2022-12-01"),
];

#[tokio::test]
async fn current_sdk_api_versions_are_accepted_and_unknown_ones_refused_as_azure_does() {
    let emulator = support::arm::tutorial_emulator(|_| {}).await;
    let admin = Admin::of(&emulator);
    for (package, path, version) in SDK_DEFAULTS {
        let (status, v) = admin
            .answer(&format!("/subscriptions/{SUB}{path}?api-version={version}"))
            .await;
        assert!(
            status == 200 || status == 404,
            "{package} {path}: {status} {v}"
        );
    }
    // A provider's type: NoRegisteredProviderFound, naming the type, its versions and locations.
    let (status, v) = admin.answer(&format!(
                "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM?api-version=2099-01-01"
            )).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "NoRegisteredProviderFound", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "No registered resource provider found for location 'eastus' and API version '2099-01-01' for type 'virtualMachines'. The supported api-versions are '"
        ),
        "{message}"
    );
    assert!(
        message.contains(", 2026-04-01'. The supported locations are 'eastus'."),
        "{message}"
    );
    // ARM's own types: InvalidApiVersionParameter, the versions newest first.
    let (status, v) = admin
        .answer(&format!(
            "/subscriptions/{SUB}/resourcegroups/DevTest?api-version=2099-01-01"
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "InvalidApiVersionParameter", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The api-version '2099-01-01' is invalid. The supported versions are '2025-04-01,2025-03-01,"),
        "{v}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn every_list_is_followed_through_next_link() {
    let emulator = support::arm::tutorial_emulator(|w| w.knobs.page_size = 1).await;
    let client = arm_client(&emulator, emulator.admin_token());
    // The controller's principal holds four role assignments on DevTest: four pages of one.
    let found = client
        .list_role_assignments_for_principal(&rg_scope(), CONTROLLER)
        .await
        .unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    let pages: Vec<_> = emulator
        .journal()
        .into_iter()
        .filter(|e| e.operation == "RoleAssignments_ListForScope")
        .collect();
    assert_eq!(pages.len(), 4);
    assert!(!pages[0].query.contains("skiptoken"));
    for p in &pages[1..] {
        assert!(
            p.query.contains("%24skiptoken=") && p.query.contains("principalId"),
            "the filter is kept on every page: {}",
            p.query
        );
    }
    assert!(
        pages[3]
            .response
            .as_ref()
            .unwrap()
            .get("nextLink")
            .is_none()
    );
    // Role names resolve through pages too.
    let reader = client
        .find_role_definition(&format!("/subscriptions/{SUB}"), "Reader")
        .await
        .unwrap();
    assert_eq!(reader.unwrap().name, "acdd72a7-3385-48ef-bd42-f606fba81ae7");
    // Unfiltered, the built-in roles come one per page, each page linking to the next.
    let admin = Admin::of(&emulator);
    let mut next = Some(format!(
        "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01"
    ));
    let mut names = Vec::new();
    while let Some(url) = next.take() {
        let v = admin.get(&url).await;
        assert_eq!(v["value"].as_array().unwrap().len(), 1, "{v}");
        names.push(v["value"][0]["properties"]["roleName"].clone());
        next = v["nextLink"].as_str().map(str::to_string);
        if let Some(n) = &next {
            assert!(n.starts_with(emulator.arm_endpoint().as_str()), "{n}");
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn access_checks_read_each_scope_with_its_providers_api_version() {
    let emulator = uami_emulator::start(world_with_resources()).await.unwrap();
    let http = emulator_http(&emulator);
    let arm = emulator.arm_endpoint();
    let token =
        |p: &str| SecretString::from(emulator.issue_token(p, "https://management.azure.com/"));
    for (principal, scope, operation, version) in [
        (
            ON_SUB,
            format!("/subscriptions/{SUB}"),
            "Subscriptions_Get",
            api_versions::SUBSCRIPTIONS,
        ),
        (
            ON_RG,
            rg_scope(),
            "ResourceGroups_Get",
            api_versions::RESOURCES,
        ),
        (
            ON_SA,
            storage_id(),
            "StorageAccounts_GetProperties",
            api_versions::STORAGE,
        ),
        (ON_KV, vault_id(), "Vaults_Get", api_versions::KEY_VAULT),
    ] {
        emulator.reset_counts();
        for (who, status, why) in [
            (NOBODY, 403, "read, then refused by RBAC"),
            (principal, 200, ""),
        ] {
            let answer = probe_access(&http, &arm, &scope, &token(who)).await;
            assert_eq!(answer.unwrap(), status, "{scope}: {why}");
        }
        let journal = emulator.journal();
        assert_eq!(journal.len(), 2);
        for e in &journal {
            assert_eq!(e.operation, operation);
            assert!(
                e.query.contains(&format!("api-version={version}")),
                "{}",
                e.query
            );
        }
        assert_eq!(
            journal[1].response.as_ref().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_lowercase(),
            scope.to_lowercase()
        );
    }
    // The Resources api-version every scope used to get is refused by the other providers, as
    // ARM refuses it.
    for scope in [storage_id(), vault_id()] {
        let r = http
            .get(format!(
                "{}{}?api-version={}",
                arm.as_str().trim_end_matches('/'),
                scope,
                api_versions::RESOURCES
            ))
            .bearer_auth(token(ON_SUB).expose())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{scope}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "NoRegisteredProviderFound", "{v}");
    }
    // A provider the check does not know: refused here, with no request sent.
    emulator.reset_counts();
    let vnet = format!(
        "{}/providers/Microsoft.Network/virtualNetworks/vnet1",
        rg_scope()
    );
    let e = probe_access(&http, &arm, &vnet, &token(ON_SUB))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "UnsupportedScope");
    assert!(
        e.message.contains("Microsoft.Network/virtualNetworks"),
        "{e}"
    );
    assert!(emulator.journal().is_empty());
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_verifies_a_storage_account_and_names_a_scope_it_cannot_check() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    opts.world = world_with_resources();
    opts.world.lro_retry_after_seconds = 0;
    opts.world.rbac_propagation_seconds = 0.2;
    opts.agent_interval = Duration::from_millis(700);
    let stack = tutorial_stack(opts).await;
    let grant = |name: &str, id: &str| {
        fixtures::grant(
            TUTORIAL,
            name,
            TUTORIAL_IDENTITY,
            "Reader",
            fixtures::resource(id),
        )
        .with(|g| g.spec.verify_access = true)
        .yaml()
    };
    let vnet = format!(
        "{}/providers/Microsoft.Network/virtualNetworks/vnet1",
        rg_scope()
    );
    stack
        .apply_yaml(&grant("reads-storage", &storage_id()))
        .await
        .unwrap();
    stack
        .apply_yaml(&grant("reads-vault", &vault_id()))
        .await
        .unwrap();
    stack.apply_yaml(&grant("reads-vnet", &vnet)).await.unwrap();
    let api = grants(&stack, "tutorial");
    for name in ["reads-storage", "reads-vault"] {
        let s = ready(&api, name, 60).await.status.unwrap();
        assert_eq!(
            condition(&s.conditions, "AccessVerified").unwrap().0,
            "True"
        );
        assert_eq!(s.access.unwrap().http_status, Some(200));
    }
    let unsupported = eventually(60, "AccessVerified=False, UnsupportedScope", || async {
        let s = api.get("reads-vnet").await.ok()?.status?;
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "AccessVerified" && c.reason == "UnsupportedScope")?
            .clone();
        Some((s, c))
    })
    .await;
    assert_eq!(unsupported.1.status, "False");
    assert!(
        unsupported
            .1
            .message
            .contains("Microsoft.Network/virtualNetworks"),
        "{}",
        unsupported.1.message
    );
    assert_eq!(
        condition(&unsupported.0.conditions, "Granted").unwrap().0,
        "True",
        "the grant itself was made"
    );
    let journal = stack.emulator.journal();
    for (op, version) in [
        ("StorageAccounts_GetProperties", api_versions::STORAGE),
        ("Vaults_Get", api_versions::KEY_VAULT),
    ] {
        assert!(
            journal.iter().any(|e| e.operation == op
                && e.status == 200
                && e.query.contains(&format!("api-version={version}"))),
            "{op}"
        );
    }
    assert!(
        !journal.iter().any(|e| e.path.eq_ignore_ascii_case(&vnet)),
        "no access check was sent for the unsupported scope"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_events_carry_arm_code_and_message_only() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    opts.world.knobs.inner_errors = true;
    // Resource group Other, where the controller may create identities but not assign them.
    opts.world.subscriptions[0]
        .resource_groups
        .push(uami_emulator::world::ResourceGroup {
            name: "Other".into(),
            location: "eastus".into(),
            virtual_machines: Vec::new(),
            virtual_machine_scale_sets: Vec::new(),
            storage_accounts: Vec::new(),
            key_vaults: Vec::new(),
        });
    opts.world.role_assignments.push(InitialAssignment {
        principal_id: CONTROLLER.into(),
        role: "Managed Identity Contributor".into(),
        scope: format!("/subscriptions/{SUB}/resourceGroups/Other"),
    });
    let stack = Stack::start(opts).await.unwrap();
    // The controller holds no role in resource group Elsewhere, and may not assign identities
    // of Other: ARM answers 403 with its envelope, here with details and an inner exception
    // dump besides code and message.
    stack
        .apply_yaml(include_str!("arm_fidelity/errors.yaml"))
        .await
        .unwrap();
    let refused = |v: Value| {
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (c["status"] == "False" && c["message"].as_str()?.contains("does not have")).then_some(v)
    };
    let grant = eventually(60, "the grant refused with ARM's message", || async {
        refused(
            serde_json::to_value(grants(&stack, "errors").get("reads-elsewhere").await.ok()?)
                .ok()?,
        )
    })
    .await;
    let binding = eventually(60, "the binding refused with ARM's message", || async {
        refused(serde_json::to_value(bindings(&stack, "errors").get("on-myvm").await.ok()?).ok()?)
    })
    .await;
    let answered = stack
        .emulator
        .journal()
        .into_iter()
        .filter_map(|e| e.response)
        .any(|r| r.to_string().contains(INNER_ERROR_DUMP));
    assert!(answered, "the emulator did send the inner error");
    for v in [&grant, &binding] {
        let text = v["status"].to_string();
        assert!(
            text.contains("AuthorizationFailed") || text.contains("Forbidden"),
            "{text}"
        );
        assert!(!text.contains(INNER_ERROR_DUMP), "{text}");
        assert!(!text.contains("InternalDiagnostics"), "{text}");
        assert!(!text.contains("innererror"), "{text}");
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(stack.client(), "errors");
    let listed = eventually(30, "the binding's AssignFailed event", || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("AssignFailed"))
            .then_some(l)
    })
    .await;
    let events_text = serde_json::to_string(&listed.items).unwrap();
    assert!(
        events_text.contains("LinkedAuthorizationFailed: "),
        "{events_text}"
    );
    assert!(!events_text.contains(INNER_ERROR_DUMP), "{events_text}");
    stack.stop().await;
}
