//! The whole world in one process: the embedded Kubernetes API, the Azure emulator, the
//! controller and one agent per emulated VM, wired exactly as they would be on a cluster (the
//! controller signs in to the emulator's Entra ID with a client secret, the agents use their VM's
//! IMDS; ARM and Entra ID are HTTPS, and the controller and the agents trust the emulator's
//! certificate authority as `--azure-ca-file` would make them). The demo and the end-to-end tests
//! start it through [`Stack::start`].

use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, External};
use uami_agent::AgentSettings;
use uami_azure::auth::{CredentialConfig, ImdsRetryPolicy};
use uami_azure::http::AzureCa;
use uami_controller::app::{self, ControllerOptions};
use uami_controller::leader::LeaseConfig;
use uami_controller::target_writer::WriterConfig;
use uami_emulator::{self as emulator, Emulator, World};
use uami_sandbox::{self as sandbox, Sandbox, SandboxOptions};

/// Why the stack could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The emulator failed.
    #[error("emulator: {0}")]
    Emulator(#[from] emulator::EmulatorError),
    /// The sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The world has no controller service principal with a secret.
    #[error("the world declares no service principal with a client secret for the controller")]
    NoControllerPrincipal,
    /// An object could not be read.
    #[error("{0}")]
    Input(String),
    /// An agent could not start.
    #[error("agent: {0}")]
    Agent(String),
    /// The emulator's certificate authority could not be read.
    #[error("the emulator's certificate authority: {0}")]
    Ca(String),
}

/// How to start the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// The emulated Azure.
    pub world: World,
    /// The controller's drift check period.
    pub resync_period: Duration,
    /// How often agents look at every binding.
    pub agent_interval: Duration,
    /// Start the controller.
    pub controller: bool,
    /// Start one agent per VM and scale set instance.
    pub agents: bool,
    /// Run the controller and the agents as the chart's service accounts of this namespace
    /// (`uami-controller`, and `uami-agent` with tokens bound to each agent's node), authorized
    /// by the RBAC objects in the sandbox, with the controller's Lease in that namespace. `None`
    /// runs them as administrators.
    pub service_accounts: Option<String>,
    /// The controller's cluster name (part of the identities' owner tag).
    pub cluster_name: String,
    /// Run on this external API server instead of a sandbox of the stack's own. The stack
    /// installs its CRDs there, and [`Stack::stop`] resets it (see [`External::reset`]).
    pub external: Option<External>,
}

impl StackOptions {
    /// The tutorial's world with the given resync period.
    pub fn tutorial(resync_period: Duration) -> Result<Self, StackError> {
        Ok(Self {
            world: World::tutorial()?,
            resync_period,
            agent_interval: Duration::from_secs(2),
            controller: true,
            agents: true,
            service_accounts: None,
            cluster_name: "sandbox".into(),
            external: None,
        })
    }
}

/// A running stack.
pub struct Stack {
    /// The Kubernetes API.
    pub cluster: Cluster,
    /// The Azure emulator.
    pub emulator: Emulator,
    /// The controller's metrics.
    pub registry: Arc<Mutex<Registry>>,
    opts: StackOptions,
    admin: kube::Client,
    /// The controller's client when it runs as the chart's service account.
    controller_client: Option<kube::Client>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The certificate authorities to trust for the emulator's ARM and Entra ID: its own, or none
/// when it serves plain HTTP.
pub fn emulator_ca(emulator: &Emulator) -> Result<AzureCa, StackError> {
    emulator
        .ca_pem()
        .map(AzureCa::from_pem)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(StackError::Ca)
}

/// The options a controller of `emulator` runs with: its ARM and Entra ID, trusting its
/// certificate authority, signed in as the world's first service principal with a secret.
pub fn controller_options(
    emulator: &Emulator,
    resync: Duration,
) -> Result<ControllerOptions, StackError> {
    let world = emulator.world();
    let arm = emulator.arm_endpoint();
    let authority = emulator.authority_host();
    let sp = world
        .service_principals
        .iter()
        .find(|s| s.client_secret.is_some())
        .ok_or(StackError::NoControllerPrincipal)?;
    Ok(ControllerOptions {
        arm_endpoint: arm,
        arm_scope: "https://management.azure.com/.default".into(),
        cluster_name: "sandbox".into(),
        credential: CredentialConfig::ClientSecret {
            authority_host: authority.clone(),
            tenant_id: world.tenant_id.clone(),
            client_id: sp.client_id.clone(),
            client_secret: secrecy::SecretString::from(
                sp.client_secret.clone().unwrap_or_default(),
            ),
        },
        default_subscription: world.subscriptions.first().map(|s| s.id.clone()),
        resync_period: resync,
        // The controller counts against the world's limit, as it would against Azure's.
        role_assignment_limit: world.limits.role_assignments_per_subscription,
        concurrency: 4,
        reads: (20.0, 250.0),
        writes: (8.0, 100.0),
        lease: None,
        writer: WriterConfig {
            batch_window: Duration::from_millis(300),
            default_poll: Duration::from_millis(500),
            ..WriterConfig::default()
        },
        instance: None,
        arm_timeout: Duration::from_secs(60),
        oidc_issuer: None,
        authority_host: authority,
        data_planes: uami_azure::DataPlanes {
            blob: emulator.blob_endpoint(),
            key_vault: emulator.keyvault_endpoint(),
        },
        azure_ca: emulator_ca(emulator)?,
    })
}

impl Stack {
    /// Start everything.
    pub async fn start(opts: StackOptions) -> Result<Self, StackError> {
        let cluster = match &opts.external {
            Some(x) => {
                x.reset().await?;
                Cluster::External(Box::new(x.clone()))
            }
            None => Cluster::Sandbox(Box::new(sandbox::start(SandboxOptions::default()).await?)),
        };
        let crds: Vec<Value> = uami_api::crds()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        cluster.install(crds).await?;
        let emulator = emulator::start(opts.world.clone()).await?;
        let admin = cluster.client()?;
        let mut stack = Self {
            cluster,
            emulator,
            registry: Arc::new(Mutex::new(Registry::default())),
            opts,
            admin,
            controller_client: None,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        if let Some(ns) = stack.opts.service_accounts.clone() {
            stack.run_as_service_accounts(&ns).await?;
        }
        if stack.opts.controller {
            let h = stack.start_controller(None, stack.stop.child_token())?;
            stack.tasks.push(h);
        }
        if stack.opts.agents {
            for name in stack.emulator.imds_names() {
                stack.start_agent(&name).await?;
            }
        }
        Ok(stack)
    }

    /// From now on, run controllers and agents as the service accounts `uami-controller` and
    /// `uami-agent` of `namespace` (as the chart installs them; with [`StackOptions`]'s
    /// `service_accounts` set from the start, the stack does this itself).
    pub async fn run_as_service_accounts(&mut self, namespace: &str) -> Result<(), StackError> {
        self.controller_client = Some(
            self.cluster
                .client_for_service_account(namespace, "uami-controller", None)
                .await?,
        );
        self.opts.service_accounts = Some(namespace.to_string());
        Ok(())
    }

    /// The client the stack's controllers use, when they run as a service account.
    pub fn controller_client(&self) -> Option<kube::Client> {
        self.controller_client.clone()
    }

    /// Start a controller that stops with the stack; with `holder` set it runs under leader
    /// election.
    pub fn spawn_controller(&mut self, holder: Option<&str>) -> Result<(), StackError> {
        let h = self.start_controller(holder, self.stop.child_token())?;
        self.tasks.push(h);
        Ok(())
    }

    /// Start (another) controller; with `holder` set it runs under leader election.
    pub fn start_controller(
        &self,
        holder: Option<&str>,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, StackError> {
        let mut opts = controller_options(&self.emulator, self.opts.resync_period)?;
        opts.cluster_name = self.opts.cluster_name.clone();
        let lease_namespace = self.opts.service_accounts.as_deref().unwrap_or("default");
        opts.lease = holder.map(|h| {
            LeaseConfig::new(
                "uami-controller",
                lease_namespace,
                h,
                Duration::from_secs(4),
            )
        });
        // The cluster's service account tokens carry its issuer.
        opts.oidc_issuer = Some(self.cluster.oidc_issuer());
        let client = match &self.controller_client {
            Some(client) => client.clone(),
            None => self
                .cluster
                .client_as(&format!("controller-{}", holder.unwrap_or("main")))?,
        };
        let mut registry = self.registry.lock();
        Ok(app::start(client, opts, &mut registry, stop, |_| {}))
    }

    /// Start the agent of one VM or scale set instance.
    pub async fn start_agent(&mut self, vm: &str) -> Result<(), StackError> {
        let Some(imds) = self.emulator.imds_endpoint(vm) else {
            return Err(StackError::Agent(format!("no VM {vm}")));
        };
        let settings = AgentSettings {
            interval: self.opts.agent_interval,
            refresh_margin: Duration::from_secs(300),
            recheck: self.opts.agent_interval,
            // The emulator's IMDS knows an assignment as soon as ARM answers it.
            assignment_propagation: Duration::from_secs(3),
        };
        let policy = ImdsRetryPolicy {
            delta: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            gone_for: Duration::from_secs(3),
            ..ImdsRetryPolicy::default()
        };
        let client = match &self.opts.service_accounts {
            Some(ns) => {
                self.cluster
                    .client_for_service_account(ns, "uami-agent", Some(&node_name(vm)))
                    .await?
            }
            None => self.cluster.client_as(&format!("agent-{vm}"))?,
        };
        let (_, handle) = uami_agent::start(
            client,
            imds,
            uami_agent::AccessEndpoints {
                arm: self.emulator.arm_endpoint(),
                data_planes: uami_azure::DataPlanes {
                    blob: self.emulator.blob_endpoint(),
                    key_vault: self.emulator.keyvault_endpoint(),
                },
            },
            &emulator_ca(&self.emulator)?,
            settings,
            policy,
            self.stop.child_token(),
        )
        .await
        .map_err(|e| StackError::Agent(e.to_string()))?;
        self.tasks.push(handle);
        Ok(())
    }

    /// An admin client of the Kubernetes API.
    pub fn client(&self) -> kube::Client {
        self.admin.clone()
    }

    /// The sandbox, when the stack runs on its own.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.cluster.sandbox()
    }

    /// Server-side apply every object of a multi-document YAML, as `kubectl apply
    /// --server-side` does.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<DynamicObject>, StackError> {
        use serde::Deserialize;
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).map_err(|e| StackError::Input(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            out.push(super::cluster::apply_value(&self.admin, &v).await?);
        }
        Ok(out)
    }

    /// Stop everything.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.emulator.shutdown().await;
        if let Cluster::External(x) = &self.cluster
            && let Err(e) = x.reset().await
        {
            tracing::warn!(error = %e, "could not reset the external API server");
        }
        self.cluster.shutdown().await;
    }
}

/// The Kubernetes node name of a VM or scale set instance (`NAME_ID`) as AKS names nodes: the
/// VM name, or the scale set name followed by the instance id in base 36 on 6 characters, in
/// lower case.
pub fn node_name(vm: &str) -> String {
    match vm.rsplit_once('_').map(|(ss, id)| (ss, id.parse::<u64>())) {
        Some((ss, Ok(mut id))) => {
            let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
            let mut suffix = Vec::new();
            while id > 0 {
                suffix.push(digits[(id % 36) as usize] as char);
                id /= 36;
            }
            while suffix.len() < 6 {
                suffix.push('0');
            }
            suffix.reverse();
            format!(
                "{}{}",
                ss.to_lowercase(),
                suffix.into_iter().collect::<String>()
            )
        }
        _ => vm.to_lowercase(),
    }
}
