//! The agent on the VM: access is denied (403) until the grant propagates, then verified; a
//! token nearing expiry is renewed and status follows; an identity removed from the VM turns
//! `TokenAcquired` False; IMDS faults are retried and IMDS's limits are never exceeded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::arm::Admin;
use support::*;
use uami_api::binding::AccessPlane;
use uami_emulator::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_denied_until_the_grant_propagates_then_verified() {
    // Long enough that the first check falls inside it even on a loaded machine.
    let mut opts = tutorial_options(Duration::from_secs(60), 10.0);
    opts.agent_interval = Duration::from_millis(700);
    let stack = tutorial_stack(opts).await;
    let api = grants(&stack, TUTORIAL);
    // The agent writes AccessVerified, the controller then derives Ready from it: both show the
    // denial, Ready as a reason, not a failure.
    let denied = eventually(
        30,
        "AccessVerified and Ready False with the 403",
        || async {
            let s = api.get(TUTORIAL_GRANT).await.ok()?.status?;
            let access_denied = ("False".to_string(), "AccessDenied".to_string());
            (condition(&s.conditions, "AccessVerified")? == access_denied
                && condition(&s.conditions, "Ready")? == access_denied)
                .then_some(s)
        },
    )
    .await;
    assert_eq!(denied.access.unwrap().http_status, Some(403));
    let verified = ready(&api, "my-identity-reads-devtest", 30)
        .await
        .status
        .unwrap();
    assert_eq!(
        condition(&verified.conditions, "AccessVerified").unwrap().0,
        "True"
    );
    assert_eq!(verified.access.unwrap().http_status, Some(200));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_and_an_unbound_identity_loses_its_token() {
    let mut opts = tutorial_options(Duration::from_secs(120), 0.2);
    opts.world.token_lifetime_seconds = 12;
    opts.agent_interval = Duration::from_secs(1);
    let stack = tutorial_stack(opts).await;
    let api = bindings(&stack, "tutorial");
    let first = ready(&api, "my-identity-on-myvm", 60)
        .await
        .status
        .unwrap()
        .token
        .unwrap()
        .expires_on
        .unwrap();
    let renewed = eventually(40, "a renewed token", || async {
        let t = api
            .get("my-identity-on-myvm")
            .await
            .ok()?
            .status?
            .token?
            .expires_on?;
        (t != first).then_some(t)
    })
    .await;
    assert!(renewed > first, "{renewed} after {first}");
    // Between renewals the agent writes nothing new: the status only changes with the token. A
    // token of 12 s is renewed 6 s before it expires, so the 2 s after a renewal hold none.
    let before = api
        .get("my-identity-on-myvm")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api.get("my-identity-on-myvm").await.unwrap();
    let t = after
        .status
        .clone()
        .unwrap()
        .token
        .unwrap()
        .expires_on
        .unwrap();
    assert_eq!(t, renewed, "no renewal within 2 s of the last one");
    assert_eq!(
        after.metadata.resource_version, before,
        "no write without a change"
    );

    // Someone removes the identity from the VM (the controller's resync is far away).
    let (status, _, _) = Admin::of(&stack.emulator)
        .patch_vm("myVM", json!({"identity": {"type": "None"}}))
        .await;
    assert_eq!(status, 200);
    condition_is(
        &api,
        TUTORIAL_BINDING,
        "TokenAcquired",
        "False",
        Some("IdentityNotAssigned"),
        30,
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_faults_are_retried_within_imds_limits() {
    let mut opts = tutorial_options(Duration::from_secs(60), 0.2);
    opts.agent_interval = Duration::from_millis(300);
    opts.world.faults = Faults {
        imds_throttle_next: 2,
        imds_gone_next: 1,
        imds_server_error_next: 1,
        ..Faults::default()
    };
    let stack = tutorial_stack(opts).await;
    ready(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING, 60).await;
    ready(&grants(&stack, TUTORIAL), TUTORIAL_GRANT, 60).await;
    let counts = stack.emulator.counts();
    assert_eq!(counts.get("Imds_Token", 429), 2, "{counts:?}");
    assert_eq!(counts.get("Imds_Token", 410), 1, "{counts:?}");
    assert_eq!(counts.get("Imds_Token", 500), 1, "{counts:?}");
    assert!(counts.get("Imds_Token", 200) >= 1);
    // Keep the agent busy for a while, then check it never exceeded IMDS's limits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = stack.emulator.imds_stats()["myVM"].clone();
    assert!(stats.max_concurrent <= 5, "{stats:?}");
    assert!(stats.max_per_second <= 20, "{stats:?}");
    assert_eq!(stats.limited, 0, "{stats:?}");
    // Cached tokens: far fewer IMDS requests than agent passes.
    assert!(
        stack.emulator.counts().total("Imds_Token") < 30,
        "{:?}",
        stack.emulator.counts()
    );
    stack.stop().await;
}

/// Passing failures after everything is Ready: IMDS answering 500 past its retries, and ARM
/// answering every access read with 500. The binding and the grant stay Ready, each says why
/// its last check failed in `lastCheckError`, and once the faults end the next check removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_failures_keep_ready_and_show_last_check_error() {
    let mut opts = tutorial_options(Duration::from_secs(120), 0.2);
    opts.agent_interval = Duration::from_millis(700);
    let stack = tutorial_stack(opts).await;
    let (b_api, g_api) = (bindings(&stack, TUTORIAL), grants(&stack, TUTORIAL));
    ready(&b_api, TUTORIAL_BINDING, 60).await;
    ready(&g_api, TUTORIAL_GRANT, 60).await;
    let mut flaps = flaps::Flaps::start(&stack.client(), &[TUTORIAL.to_string()]);

    stack.emulator.set_faults(Faults {
        imds_server_error_next: 1000,
        server_error_rate: 1.0,
        ..Faults::default()
    });
    let b = eventually(30, "the binding's lastCheckError", || async {
        let s = b_api.get(TUTORIAL_BINDING).await.ok()?.status?;
        s.last_check_error.clone().map(|e| (s, e))
    })
    .await;
    assert_eq!(b.1.reason, "ImdsUnavailable", "{:?}", b.1);
    assert_eq!(b.1.checked_by.as_deref(), Some("myVM"));
    assert_eq!(
        condition(&b.0.conditions, "TokenAcquired").unwrap().0,
        "True"
    );
    assert_eq!(condition(&b.0.conditions, "Ready").unwrap().0, "True");
    assert!(b.0.token.is_some(), "the last token's metadata stays");
    let g = eventually(30, "the grant's lastCheckError", || async {
        let s = g_api.get(TUTORIAL_GRANT).await.ok()?.status?;
        s.last_check_error.clone().map(|e| (s, e))
    })
    .await;
    assert_eq!(g.1.reason, "CheckFailed", "{:?}", g.1);
    assert!(g.1.message.contains("500"), "{:?}", g.1);
    assert_eq!(
        condition(&g.0.conditions, "AccessVerified").unwrap().0,
        "True"
    );
    assert_eq!(
        g.0.access.unwrap().http_status,
        Some(200),
        "the last answer stays"
    );
    // A while of failing checks: Ready never leaves True, and nothing secret is written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = serde_json::to_string(&b_api.get(TUTORIAL_BINDING).await.unwrap()).unwrap();
    assert!(!text.contains("eyJ"), "no token in status: {text}");

    stack.emulator.set_faults(Faults::default());
    eventually(30, "lastCheckError removed from both", || async {
        let b = b_api.get(TUTORIAL_BINDING).await.ok()?.status?;
        let g = g_api.get(TUTORIAL_GRANT).await.ok()?.status?;
        (b.last_check_error.is_none() && g.last_check_error.is_none()).then_some(())
    })
    .await;
    flaps.stop();
    assert_eq!(flaps.flaps(), Vec::<String>::new(), "Ready flapped");
    stack.stop().await;
}

/// Grants of the tutorial's identity on a storage account and a key vault: two data roles and
/// `Reader` on the vault.
const DATA_GRANTS: &str = r#"
apiVersion: uami.dev/v1alpha1
kind: GrantPolicy
metadata:
  name: tutorial-devtest-data
spec:
  namespaces: ["tutorial"]
  roleGrants:
    - roles: ["Storage Blob Data Reader", "Key Vault Secrets User", "Reader"]
      scopes:
        - resourceGroup:
            name: DevTest
---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata:
  name: my-identity-reads-blobs
  namespace: tutorial
spec:
  identityRef:
    name: my-identity
  role: Storage Blob Data Reader
  scope:
    resourceId: /subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/devtestdata
  verifyAccessOptions:
    blobContainer: reports
---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata:
  name: my-identity-reads-secrets
  namespace: tutorial
spec:
  identityRef:
    name: my-identity
  role: Key Vault Secrets User
  scope:
    resourceId: /subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.KeyVault/vaults/devtest-kv
---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata:
  name: my-identity-reads-vault
  namespace: tutorial
spec:
  identityRef:
    name: my-identity
  role: Reader
  scope:
    resourceId: /subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.KeyVault/vaults/devtest-kv
"#;

/// A data role is verified where it acts: `Storage Blob Data Reader` by listing blobs (403
/// while the assignment propagates, then 200), `Key Vault Secrets User` by listing secrets,
/// `Reader` on the same vault through ARM. The emulator's data planes refuse `Reader` and a
/// token for another audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_roles_are_verified_on_their_data_plane() {
    let mut opts = tutorial_options(Duration::from_secs(60), 8.0);
    opts.agent_interval = Duration::from_millis(700);
    let rg = &mut opts.world.subscriptions[0].resource_groups[0];
    assert_eq!(rg.name, "DevTest");
    rg.storage_accounts = vec!["devtestdata".into()];
    rg.key_vaults = vec!["devtest-kv".into()];
    let stack = tutorial_stack(opts).await;
    stack.apply_yaml(DATA_GRANTS).await.unwrap();
    let api = grants(&stack, TUTORIAL);

    let denied = eventually(
        40,
        "the blob grant denied on the Blob plane while it propagates",
        || async {
            let s = api.get("my-identity-reads-blobs").await.ok()?.status?;
            let (status, reason) = condition(&s.conditions, "AccessVerified")?;
            (status == "False" && reason == "AccessDenied").then_some(s)
        },
    )
    .await;
    let access = denied.access.clone().unwrap();
    assert_eq!(access.http_status, Some(403), "{denied:?}");
    assert_eq!(access.plane, AccessPlane::Blob, "{denied:?}");
    let counts = stack.emulator.counts();
    assert!(counts.get("Blob_ListBlobs", 403) >= 1, "{counts:?}");

    for (grant, plane) in [
        ("my-identity-reads-blobs", AccessPlane::Blob),
        ("my-identity-reads-secrets", AccessPlane::KeyVault),
        ("my-identity-reads-vault", AccessPlane::Arm),
    ] {
        let s = ready(&api, grant, 60).await.status.unwrap();
        let access = s.access.clone().unwrap();
        assert_eq!(access.http_status, Some(200), "{grant}: {s:?}");
        assert_eq!(access.plane, plane, "{grant}: {s:?}");
        let (status, _) = condition(&s.conditions, "AccessVerified").unwrap();
        assert_eq!(status, "True", "{grant}");
        let message = &conditions_message(&s.conditions, "AccessVerified");
        let named = match plane {
            AccessPlane::Blob => "Blob Storage data plane",
            AccessPlane::KeyVault => "Key Vault data plane",
            AccessPlane::Arm => "through ARM",
        };
        assert!(message.contains(named), "{grant}: {message}");
    }
    let counts = stack.emulator.counts();
    assert!(counts.get("Blob_ListBlobs", 200) >= 1, "{counts:?}");
    assert!(counts.get("Secrets_GetSecrets", 200) >= 1, "{counts:?}");
    // The binding told the agent where each grant acts.
    let binding = read(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING)
        .await
        .status
        .unwrap();
    let blob = binding
        .access_checks
        .iter()
        .find(|c| c.role_grant == "my-identity-reads-blobs")
        .unwrap();
    assert_eq!(
        (blob.plane, blob.container.as_deref()),
        (AccessPlane::Blob, Some("reports"))
    );

    // The data planes as any caller sees them: the identity's Reader on the vault lists no
    // secrets, and a token for ARM opens neither plane.
    let principal = api
        .get("my-identity-reads-vault")
        .await
        .unwrap()
        .status
        .unwrap()
        .principal_id
        .unwrap();
    let base = stack.emulator.arm_endpoint().to_string();
    let base = base.trim_end_matches('/');
    let read =
        |url: String, audience: &'static str| data_plane_get(&stack, &principal, url, audience);
    let secrets = format!("{base}/_data/vault/devtest-kv/secrets?api-version=7.4");
    let blobs = format!("{base}/_data/blob/devtestdata/reports?restype=container&comp=list");
    let (status, body) = read(secrets.clone(), "https://vault.azure.net").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"value\""), "{body}");
    let (status, body) = read(blobs.clone(), "https://storage.azure.com/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<EnumerationResults"), "{body}");
    let (status, _) = read(secrets, "https://management.azure.com/").await;
    assert_eq!(status, 401, "a token for ARM is refused by Key Vault");
    let (status, _) = read(blobs, "https://management.azure.com/").await;
    assert_eq!(status, 401, "a token for ARM is refused by Blob Storage");
    stack.stop().await;
}

fn conditions_message(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// `Reader` grants nothing on the data planes: with only `Reader` on the account and the vault,
/// the emulator's Blob Storage answers 403 `AuthorizationPermissionMismatch` and its Key Vault
/// 403 `Forbidden` with inner error `ForbiddenByRbac`, while ARM reads both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_planes_refuse_reader() {
    let mut opts = tutorial_options(Duration::from_secs(60), 0.0);
    opts.controller = false;
    opts.agents = false;
    let rg = &mut opts.world.subscriptions[0].resource_groups[0];
    rg.storage_accounts = vec!["devtestdata".into()];
    rg.key_vaults = vec!["devtest-kv".into()];
    let stack = uami::demo::stack::Stack::start(opts).await.unwrap();
    let admin = Admin::of(&stack.emulator);
    let identity = admin
        .put_identity("reader-only", serde_json::json!({}))
        .await;
    let principal = identity["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    let principal = principal.as_str();
    let rg_path = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest";
    let (status, _, body) = admin
        .send(
            reqwest::Method::PUT,
            &format!(
                "{rg_path}/providers/Microsoft.Authorization/roleAssignments/0b6c1a52-3b38-4bd5-a5a3-1a3e0c7c2d11?api-version=2022-04-01"
            ),
            Some(support::arm::reader_assignment(principal)),
            &[],
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let base = stack.emulator.arm_endpoint().to_string();
    let base = base.trim_end_matches('/');
    let get =
        |url: String, audience: &'static str| data_plane_get(&stack, principal, url, audience);
    let (status, body) = get(
        format!("{base}/_data/blob/devtestdata/reports?restype=container&comp=list"),
        "https://storage.azure.com/",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("<Code>AuthorizationPermissionMismatch</Code>"),
        "{body}"
    );
    let (status, body) = get(
        format!("{base}/_data/vault/devtest-kv/secrets?api-version=7.4"),
        "https://vault.azure.net",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "Forbidden", "{body}");
    assert_eq!(
        error["error"]["innererror"]["code"], "ForbiddenByRbac",
        "{body}"
    );
    // ARM reads both with the same principal's ARM token.
    let arm = Admin::with_token(
        &stack.emulator,
        stack
            .emulator
            .issue_token(principal, "https://management.azure.com/"),
    );
    for path in [
        "providers/Microsoft.Storage/storageAccounts/devtestdata?api-version=2023-05-01",
        "providers/Microsoft.KeyVault/vaults/devtest-kv?api-version=2023-07-01",
    ] {
        assert_eq!(
            arm.get_status(&format!("{rg_path}/{path}")).await,
            200,
            "{path}"
        );
    }
    stack.stop().await;
}

/// GET `url` of the emulator's data plane with a token of `principal` for `audience`: the status
/// and the body.
async fn data_plane_get(
    stack: &uami::demo::stack::Stack,
    principal: &str,
    url: String,
    audience: &str,
) -> (u16, String) {
    let token = stack.emulator.issue_token(principal, audience);
    let r = support::emulator_http(&stack.emulator)
        .get(url)
        .bearer_auth(token)
        .header("x-ms-version", "2021-08-06")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
