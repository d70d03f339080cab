//! `uami-controller demo`: the tutorial on the embedded defaults. Starts the stack, applies
//! `examples/tutorial.yaml`, shows progress as conditions change, then prints the identity's ids,
//! the VM's identities, the role assignment, the token metadata and the verified access.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::Api;
use serde_json::Value;

use super::stack::{Stack, StackError, StackOptions};
use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};

/// The tutorial's objects (the same file as `examples/tutorial.yaml`).
pub const TUTORIAL: &str = include_str!("../../examples/tutorial.yaml");
/// The service account path's objects (the same file as `examples/workload-identity.yaml`).
pub const WORKLOAD_IDENTITY: &str = include_str!("../../examples/workload-identity.yaml");

/// Demo options.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Leave everything running and print the kubeconfig path.
    pub keep_running: bool,
    /// Where to write the kubeconfig with `keep_running`.
    pub kubeconfig: PathBuf,
    /// Then bind an identity to a service account (workload identity) and prove it.
    pub workload_identity: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The stack failed.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// Not Ready in time.
    #[error("not everything was Ready after {0:?}; last state:\n{1}")]
    Timeout(Duration, String),
    /// Writing output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

fn conditions(v: &Value) -> BTreeMap<String, (String, String)> {
    v["status"]["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["type"].as_str().unwrap_or_default().to_string(),
                        (
                            c["status"].as_str().unwrap_or_default().to_string(),
                            c["reason"].as_str().unwrap_or_default().to_string(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The objects the demo waits for: (kind, namespace, name).
type Watched = &'static [(&'static str, &'static str, &'static str)];

const TUTORIAL_OBJECTS: Watched = &[
    ("UserAssignedIdentity", "tutorial", "my-identity"),
    ("IdentityBinding", "tutorial", "my-identity-on-myvm"),
    ("RoleGrant", "tutorial", "my-identity-reads-devtest"),
];

const WORKLOAD_OBJECTS: Watched = &[
    ("UserAssignedIdentity", "workload", "reporter-identity"),
    (
        "IdentityBinding",
        "workload",
        "reporter-identity-for-reporter",
    ),
    ("RoleGrant", "workload", "reporter-reads-devtest"),
];

async fn snapshot(stack: &Stack, watched: Watched) -> Vec<(String, Value)> {
    let c = stack.client();
    let mut out = Vec::new();
    for (kind, ns, name) in watched {
        let v = match *kind {
            "UserAssignedIdentity" => Api::<UserAssignedIdentity>::namespaced(c.clone(), ns)
                .get(name)
                .await
                .ok()
                .map(serde_json::to_value),
            "IdentityBinding" => Api::<IdentityBinding>::namespaced(c.clone(), ns)
                .get(name)
                .await
                .ok()
                .map(serde_json::to_value),
            _ => Api::<RoleGrant>::namespaced(c.clone(), ns)
                .get(name)
                .await
                .ok()
                .map(serde_json::to_value),
        };
        if let Some(Ok(v)) = v {
            out.push((format!("{kind}/{name}"), v));
        }
    }
    out
}

/// Show conditions as they change until every watched object is Ready.
async fn wait_ready(
    stack: &Stack,
    watched: Watched,
    timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<Result<(Vec<(String, Value)>, Duration), String>, DemoError> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
    loop {
        let snap = snapshot(stack, watched).await;
        for (name, v) in &snap {
            let now = conditions(v);
            let before = seen.entry(name.clone()).or_default();
            for (t, (s, r)) in &now {
                if before.get(t) != Some(&(s.clone(), r.clone())) {
                    writeln!(
                        out,
                        "  [{:>5.1}s] {name}: {t}={s} ({r})",
                        started.elapsed().as_secs_f64()
                    )?;
                }
            }
            *before = now;
        }
        if all_ready(&snap, watched.len()) {
            return Ok(Ok((snap, started.elapsed())));
        }
        if started.elapsed() > timeout {
            return Ok(Err(describe(&snap)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn all_ready(snap: &[(String, Value)], expected: usize) -> bool {
    snap.len() == expected
        && snap
            .iter()
            .all(|(_, v)| conditions(v).get("Ready").is_some_and(|(s, _)| s == "True"))
}

fn describe(snap: &[(String, Value)]) -> String {
    snap.iter()
        .map(|(name, v)| {
            let conds: Vec<String> = conditions(v)
                .iter()
                .map(|(t, (s, r))| format!("{t}={s} ({r})"))
                .collect();
            format!("  {name}: {}", conds.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until every watched object is Ready and say so (`what` is Ready after ...), or fail
/// with their last state.
async fn ready(
    stack: &Stack,
    watched: Watched,
    timeout: Duration,
    out: &mut (dyn Write + Send),
    what: &str,
) -> Result<Vec<(String, Value)>, DemoError> {
    match wait_ready(stack, watched, timeout, out).await? {
        Ok((snap, took)) => {
            writeln!(out, "\n{what} Ready after {:.1}s.\n", took.as_secs_f64())?;
            Ok(snap)
        }
        Err(state) => Err(DemoError::Timeout(timeout, state)),
    }
}

/// The object `name` (`Kind/name`) of a snapshot.
fn object(snap: &[(String, Value)], name: &str) -> Value {
    snap.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A string field, or `-`.
fn s(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// The token metadata a binding reports and the access check its grant reports, each under its
/// heading.
fn print_checks(
    out: &mut (dyn Write + Send),
    token_heading: &str,
    binding: &Value,
    access_heading: &str,
    grant: &Value,
) -> std::io::Result<()> {
    writeln!(out, "{token_heading}")?;
    print_fields(
        out,
        &binding["status"]["token"],
        &[
            ("audience:   ", "resource"),
            ("clientId:   ", "clientId"),
            ("tenantId:   ", "tenantId"),
            ("objectId:   ", "objectId"),
            ("expiresOn:  ", "expiresOn"),
            ("checkedBy:  ", "checkedBy"),
        ],
    )?;
    writeln!(out, "{access_heading}")?;
    let access = &grant["status"]["access"];
    writeln!(out, "  verified:   {}", access["verified"])?;
    writeln!(out, "  httpStatus: {}", access["httpStatus"])?;
    writeln!(out, "  checkedBy:  {}", s(&access["checkedBy"]))
}

/// One `label value` line for each (label, key) of `fields`, from the string fields of `v`.
fn print_fields(
    out: &mut (dyn Write + Send),
    v: &Value,
    fields: &[(&str, &str)],
) -> std::io::Result<()> {
    for (label, key) in fields {
        writeln!(out, "  {label}{}", s(&v[*key]))?;
    }
    Ok(())
}

/// Run the demo, writing to `out`.
pub async fn run(opts: DemoOptions, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    writeln!(
        out,
        "Starting the embedded Kubernetes API, the Azure emulator (subscription, resource group DevTest, VM myVM), the controller and myVM's agent..."
    )?;
    let stack = Stack::start(StackOptions::tutorial(Duration::from_secs(30))?).await?;
    if let Some(sb) = stack.sandbox() {
        writeln!(out, "  Kubernetes API: {}", sb.url())?;
    }
    writeln!(out, "  Azure (ARM):    {}", stack.emulator.arm_endpoint())?;
    writeln!(
        out,
        "Applying examples/tutorial.yaml (identity, binding to myVM, Reader on DevTest)..."
    )?;
    stack.apply_yaml(TUTORIAL).await?;
    let snap = match ready(&stack, TUTORIAL_OBJECTS, opts.timeout, out, "Everything is").await {
        Ok(snap) => snap,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    let identity = object(&snap, "UserAssignedIdentity/my-identity");
    let binding = object(&snap, "IdentityBinding/my-identity-on-myvm");
    let grant = object(&snap, "RoleGrant/my-identity-reads-devtest");
    writeln!(out, "Identity (step 1, az identity create):")?;
    print_fields(
        out,
        &identity["status"],
        &[
            ("resourceId:  ", "resourceId"),
            ("clientId:    ", "clientId"),
            ("principalId: ", "principalId"),
            ("tenantId:    ", "tenantId"),
        ],
    )?;
    let state = stack.emulator.state();
    let vm = state["computes"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "myVM").cloned())
        .unwrap_or_default();
    writeln!(
        out,
        "VM myVM (step 2, az vm identity assign), as Azure sees it:"
    )?;
    writeln!(out, "  identity.type: {}", s(&vm["identity"]["type"]))?;
    if let Some(m) = vm["identity"]["userAssignedIdentities"].as_object() {
        for (id, info) in m {
            writeln!(out, "  - {id}\n    clientId {}", s(&info["clientId"]))?;
        }
    }
    writeln!(out, "Role assignment (step 3, az role assignment create):")?;
    print_fields(
        out,
        &grant["status"],
        &[("id:                ", "roleAssignmentId")],
    )?;
    writeln!(
        out,
        "  roleDefinitionId:  {} (Reader)",
        s(&grant["status"]["roleDefinitionId"])
    )?;
    print_fields(
        out,
        &grant["status"],
        &[
            ("scope:             ", "scope"),
            ("principalId:       ", "principalId"),
        ],
    )?;
    print_checks(
        out,
        "Token from IMDS on myVM (step 4, metadata only; the token itself is never stored):",
        &binding,
        "Verified access (step 4, GET resource group DevTest with the identity's token):",
        &grant,
    )?;
    let counts = stack.emulator.counts();
    writeln!(
        out,
        "ARM requests the controller made: {} writes, {} in all.",
        counts.writes(),
        counts
            .0
            .iter()
            .filter(|((o, _), _)| !o.starts_with("Imds") && !o.starts_with("Aad"))
            .map(|(_, n)| n)
            .sum::<u64>()
    )?;
    if opts.workload_identity
        && let Err(e) = workload_part(&stack, opts.timeout, out).await
    {
        stack.stop().await;
        return Err(e);
    }
    if opts.keep_running {
        if let Some(sb) = stack.sandbox() {
            sb.write_kubeconfig(&opts.kubeconfig, "admin")?;
        }
        // The emulator's certificate authority, for curl --cacert and --azure-ca-file.
        let ca_file = opts.kubeconfig.with_extension("azure-ca.pem");
        if let Some(pem) = stack.emulator.ca_pem() {
            std::fs::write(&ca_file, pem)?;
        }
        writeln!(
            out,
            "\nEverything keeps running. Explore with:\n  kubectl --kubeconfig {} get azureidentity -A\n  curl --cacert {} {}_emulator/counts\nARM and Entra ID (emulator): {}\nPress Ctrl-C to stop.",
            opts.kubeconfig.display(),
            ca_file.display(),
            stack.emulator.arm_endpoint(),
            stack.emulator.arm_endpoint()
        )?;
        out.flush()?;
        let _ = tokio::signal::ctrl_c().await;
    }
    stack.stop().await;
    Ok(())
}

/// The second part: the same identity, grant and check for a service account (workload
/// identity), proven by the controller's token exchange.
async fn workload_part(
    stack: &Stack,
    timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<(), DemoError> {
    writeln!(
        out,
        "\nWorkload identity: applying examples/workload-identity.yaml (service account workload/reporter, identity reporterIdentity bound to it, Reader on DevTest)..."
    )?;
    stack.apply_yaml(WORKLOAD_IDENTITY).await?;
    let snap = ready(
        stack,
        WORKLOAD_OBJECTS,
        timeout,
        out,
        "The service account binding is",
    )
    .await?;
    let binding = object(&snap, "IdentityBinding/reporter-identity-for-reporter");
    let grant = object(&snap, "RoleGrant/reporter-reads-devtest");
    let fic_name = s(&binding["status"]["federatedCredentialName"]);
    let state = stack.emulator.state();
    let fic = state["federatedIdentityCredentials"]
        .as_array()
        .and_then(|a| a.iter().find(|f| s(&f["name"]) == fic_name).cloned())
        .unwrap_or_default();
    writeln!(
        out,
        "Federated identity credential (az identity federated-credential create), as Azure sees it:"
    )?;
    writeln!(out, "  name:      {}", s(&fic["name"]))?;
    writeln!(
        out,
        "  issuer:    {} (the cluster's OIDC issuer)",
        s(&fic["properties"]["issuer"])
    )?;
    writeln!(out, "  subject:   {}", s(&fic["properties"]["subject"]))?;
    writeln!(out, "  audiences: {}", fic["properties"]["audiences"])?;
    let sa =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(stack.client(), "workload")
            .get("reporter")
            .await
            .map_err(StackError::from)?;
    writeln!(
        out,
        "ServiceAccount workload/reporter, as the workload identity webhook reads it:"
    )?;
    for (k, v) in sa.metadata.annotations.unwrap_or_default() {
        if k.starts_with("azure.workload.identity/") {
            writeln!(out, "  {k}: {v}")?;
        }
    }
    print_checks(
        out,
        "Token exchanged for the service account's token (TokenRequest, then Entra ID; metadata only):",
        &binding,
        "Verified access (GET resource group DevTest with the exchanged token):",
        &grant,
    )?;
    Ok(())
}
