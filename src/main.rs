//! The `uami-controller` binary: one command per component.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uami_agent::config::AgentArgs;
use uami_controller::config::{CredentialMode, RunArgs};
use uami_telemetry::{admin, logging};

/// Declarative Azure user-assigned managed identities for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "uami-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a folder.
    Crds {
        /// Write `<crd-name>.yaml` files into this folder instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Reconcile identities, bindings and grants against Azure Resource Manager.
    Run(Box<RunArgs>),
    /// On a VM: obtain tokens through IMDS for the identities bound to it and verify access.
    Agent(Box<AgentArgs>),
    #[cfg(feature = "embedded")]
    /// The tutorial end to end on the embedded defaults: Kubernetes API, Azure emulator,
    /// controller and the VM's agent in one process.
    Demo {
        /// Give up (exit 1) when not everything is Ready after this long.
        #[arg(long, default_value = "120s", value_parser = uami_azure::cli::parse_duration)]
        timeout: std::time::Duration,
        /// Leave everything running and write a kubeconfig for kubectl.
        #[arg(long)]
        keep_running: bool,
        /// Where `--keep-running` writes the kubeconfig.
        #[arg(long, default_value = "uami-demo.kubeconfig")]
        kubeconfig: PathBuf,
        /// Then bind an identity to a service account (workload identity): federated identity
        /// credential, service account annotations, and the token exchange proven.
        #[arg(long)]
        workload_identity: bool,
        /// Log level of the components (their logs go to stderr).
        #[arg(long, default_value = "error")]
        log: String,
    },
    #[cfg(feature = "embedded")]
    /// An in-memory Kubernetes API server for kubectl and kube-rs, with this project's CRDs.
    Sandbox {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// Where to write the kubeconfig.
        #[arg(long, default_value = "sandbox.kubeconfig")]
        kubeconfig: PathBuf,
        /// Do not install the project's CRDs.
        #[arg(long)]
        no_crds: bool,
        /// Listen address of the HTTPS port (kubectl sends tokens only over TLS).
        #[arg(long, default_value = "127.0.0.1:6444")]
        https_listen: std::net::SocketAddr,
        /// Write a kubeconfig for a service account, authorized by the RBAC objects applied to
        /// the sandbox: `NAMESPACE:NAME=PATH`, or `NAMESPACE:NAME@NODE=PATH` for a token bound
        /// to a pod on NODE. Repeatable.
        #[arg(long, value_name = "NAMESPACE:NAME[@NODE]=PATH")]
        service_account_kubeconfig: Vec<String>,
    },
    #[cfg(feature = "embedded")]
    /// A local Azure (ARM and Entra ID over HTTPS, IMDS per VM) described by a world file.
    Emulator {
        /// The world file (see examples/emulator-world.yaml).
        #[arg(long, default_value = "examples/emulator-world.yaml")]
        world: PathBuf,
        /// ARM and Entra ID listen address (overrides the world file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Write the certificate authority (PEM) of the ARM and Entra ID listener's certificate
        /// to this file, for clients to trust (`--azure-ca-file`, curl's `--cacert`,
        /// `REQUESTS_CA_BUNDLE`).
        #[arg(long, value_name = "FILE")]
        ca_out: Option<PathBuf>,
        /// Serve ARM and Entra ID over plain HTTP (debugging only: Azure SDKs refuse to send
        /// tokens over it).
        #[arg(long)]
        plain_http: bool,
        /// A PEM file of certificate authorities that Entra ID trusts, besides the system's,
        /// when it fetches an OIDC issuer's discovery document and keys (added to the world's
        /// `oidcIssuerCaPems`). Repeatable.
        #[arg(long, value_name = "FILE")]
        oidc_issuer_ca: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds { out_dir } => crds(out_dir).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Agent(args) => agent(*args).await.map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "embedded")]
        Command::Emulator {
            world,
            listen,
            ca_out,
            plain_http,
            oidc_issuer_ca,
        } => emulator(world, listen, ca_out, plain_http, &oidc_issuer_ca)
            .await
            .map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "embedded")]
        Command::Demo {
            timeout,
            keep_running,
            kubeconfig,
            workload_identity,
            log,
        } => demo(timeout, keep_running, kubeconfig, workload_identity, &log).await,
        #[cfg(feature = "embedded")]
        Command::Sandbox {
            listen,
            kubeconfig,
            no_crds,
            https_listen,
            service_account_kubeconfig,
        } => sandbox(
            listen,
            https_listen,
            kubeconfig,
            no_crds,
            &service_account_kubeconfig,
        )
        .await
        .map(|()| ExitCode::SUCCESS),
    }
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use uami_api as api;
    match out_dir {
        None => print!("{}", api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in api::crds() {
                let path = dir.join(api::crd_file_name(&crd));
                std::fs::write(&path, api::crd_yaml(&crd)?)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    Ok(kube::Client::try_from(config)?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use uami_azure::auth::{CredentialConfig, IdentitySelector};
    use uami_controller::{app, leader::LeaseConfig, target_writer::WriterConfig};
    logging::init(args.shared.log_format, "info");
    let azure_ca = args.shared.azure_ca().map_err(anyhow::Error::msg)?;
    let client = kube_client(args.shared.kubeconfig.as_ref()).await?;
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .with_context(|| format!("{what} is required for --credential {:?}", args.credential))
    };
    let credential = match args.credential {
        CredentialMode::ClientSecret => {
            let file = args.client_secret_file.as_ref().context("--client-secret-file is required for --credential client-secret")?;
            let secret = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            CredentialConfig::ClientSecret {
                authority_host: args.authority_host.clone(),
                tenant_id: need(&args.tenant_id, "--tenant-id")?,
                client_id: need(&args.client_id, "--client-id")?,
                client_secret: secrecy::SecretString::from(secret.trim().to_string()),
            }
        }
        CredentialMode::WorkloadIdentity => CredentialConfig::WorkloadIdentity {
            authority_host: args.authority_host.clone(),
            tenant_id: need(&args.tenant_id, "--tenant-id (AZURE_TENANT_ID)")?,
            client_id: need(&args.client_id, "--client-id (AZURE_CLIENT_ID)")?,
            token_file: args.federated_token_file.clone().context("--federated-token-file (AZURE_FEDERATED_TOKEN_FILE) is required for workload identity")?,
        },
        CredentialMode::ManagedIdentity => CredentialConfig::ManagedIdentity {
            imds_endpoint: args.shared.imds_endpoint.clone(),
            selector: match &args.client_id {
                Some(id) => IdentitySelector::ClientId(id.clone()),
                None => IdentitySelector::System,
            },
        },
    };
    let holder = args
        .holder_identity
        .clone()
        .unwrap_or_else(|| format!("uami-controller-{}", uuid::Uuid::new_v4()));
    let opts = app::ControllerOptions {
        arm_endpoint: args.shared.arm_endpoint.clone(),
        arm_scope: format!("{}/.default", args.arm_audience.trim_end_matches('/')),
        credential,
        cluster_name: args.cluster_name.clone(),
        default_subscription: args.default_subscription.clone(),
        resync_period: args.resync_period,
        role_assignment_limit: args.role_assignment_limit,
        concurrency: args.concurrency,
        reads: (args.arm_reads_floor, args.arm_reads_ceiling),
        writes: (args.arm_writes_floor, args.arm_writes_ceiling),
        lease: args.leader_election.then(|| {
            LeaseConfig::new(
                &args.lease_name,
                &args.lease_namespace,
                &holder,
                args.lease_duration,
            )
        }),
        writer: WriterConfig::default(),
        instance: Some(holder.clone()),
        arm_timeout: args.arm_timeout,
        oidc_issuer: args.oidc_issuer.clone(),
        authority_host: args.authority_host.clone(),
        data_planes: args.shared.data_planes(),
        azure_ca,
    };
    let stop = shutdown_token();
    // Ready once the caches have synced and leadership is settled (see run_with_leadership).
    let (addr, handle) = app::serve(client, opts, args.admin_listen, stop).await?;
    tracing::info!(%addr, "admin endpoints: /metrics /healthz /readyz");
    handle.await?;
    tracing::info!("stopped");
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    use uami_agent::{self as agent, AgentSettings};
    logging::init(args.shared.log_format, "info");
    let azure_ca = args.shared.azure_ca().map_err(anyhow::Error::msg)?;
    let client = kube_client(args.shared.kubeconfig.as_ref()).await?;
    let stop = shutdown_token();
    let settings = AgentSettings {
        interval: args.interval,
        refresh_margin: args.refresh_margin,
        recheck: args.interval.max(std::time::Duration::from_secs(60)),
        assignment_propagation: args.assignment_propagation,
    };
    let (agent, handle) = agent::start(
        client,
        args.shared.imds_endpoint.clone(),
        agent::AccessEndpoints {
            arm: args.shared.arm_endpoint.clone(),
            data_planes: args.shared.data_planes(),
        },
        &azure_ca,
        settings,
        Default::default(),
        stop.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot learn this VM from IMDS: {e}"))?;
    tracing::info!(vm = %agent.whoami().target_id(), "agent started");
    let state = admin::AdminState::new(prometheus_client::registry::Registry::default());
    // Ready once the store of this VM's bindings has synced.
    let mut synced = agent.synced();
    let readiness = state.clone();
    tokio::spawn(async move {
        if synced.wait_for(|s| *s).await.is_ok() {
            readiness.set_ready(true);
        }
    });
    let s = stop.clone();
    admin::serve(args.admin_listen, state, async move { s.cancelled().await }).await?;
    handle.await?;
    Ok(())
}

#[cfg(feature = "embedded")]
async fn emulator(
    world: PathBuf,
    listen: Option<std::net::SocketAddr>,
    ca_out: Option<PathBuf>,
    plain_http: bool,
    oidc_issuer_ca: &[PathBuf],
) -> anyhow::Result<()> {
    use uami_emulator as emulator;
    logging::init(logging::LogFormat::Text, "info");
    let mut w = emulator::World::from_file(&world)?;
    if let Some(l) = listen {
        w.listen = l;
    }
    w.plain_http |= plain_http;
    for path in oidc_issuer_ca {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--oidc-issuer-ca {}", path.display()))?;
        w.oidc_issuer_ca_pems.push(pem);
    }
    let emu = emulator::start(w).await?;
    match (&ca_out, emu.ca_pem()) {
        (Some(path), Some(pem)) => {
            std::fs::write(path, pem).with_context(|| format!("--ca-out {}", path.display()))?
        }
        (Some(_), None) => anyhow::bail!("--ca-out: plain HTTP has no certificate authority"),
        _ => {}
    }
    println!("ARM:       {}", emu.arm_endpoint());
    println!(
        "Entra ID:  {}{}/oauth2/v2.0/token",
        emu.authority_host(),
        emu.tenant_id()
    );
    for name in emu.imds_names() {
        if let Some(url) = emu.imds_endpoint(&name) {
            println!("IMDS {name}: {url}");
        }
    }
    println!(
        "Admin:     {}_emulator/counts, /_emulator/state, /_emulator/journal, /_emulator/faults",
        emu.arm_endpoint()
    );
    match (&ca_out, emu.ca_pem()) {
        (Some(path), Some(_)) => println!("CA:        {} (PEM)", path.display()),
        (None, Some(_)) => {
            println!("CA:        not written; --ca-out FILE writes it for clients to trust")
        }
        _ => println!("Plain HTTP: Azure SDKs will not send tokens to it"),
    }
    shutdown_token().cancelled().await;
    emu.shutdown().await;
    Ok(())
}

#[cfg(feature = "embedded")]
async fn demo(
    timeout: std::time::Duration,
    keep_running: bool,
    kubeconfig: PathBuf,
    workload_identity: bool,
    log: &str,
) -> anyhow::Result<ExitCode> {
    use uami::demo::run::{DemoOptions, run};
    logging::init(logging::LogFormat::Text, log);
    let mut out = std::io::stdout();
    match run(
        DemoOptions {
            timeout,
            keep_running,
            kubeconfig,
            workload_identity,
        },
        &mut out,
    )
    .await
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("demo failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(feature = "embedded")]
async fn sandbox(
    listen: std::net::SocketAddr,
    https_listen: std::net::SocketAddr,
    kubeconfig: PathBuf,
    no_crds: bool,
    service_accounts: &[String],
) -> anyhow::Result<()> {
    use uami_sandbox::{self as sandbox, SandboxOptions};
    logging::init(logging::LogFormat::Text, "info");
    // NAMESPACE:NAME[@NODE]=PATH
    let mut accounts = Vec::new();
    for spec in service_accounts {
        let parsed = spec.split_once('=').and_then(|(who, path)| {
            let (who, node) = match who.split_once('@') {
                Some((w, n)) => (w, Some(n.to_string())),
                None => (who, None),
            };
            let (ns, name) = who.split_once(':')?;
            (!ns.is_empty() && !name.is_empty() && !path.is_empty())
                .then(|| (ns.to_string(), name.to_string(), node, PathBuf::from(path)))
        });
        match parsed {
            Some(a) => accounts.push(a),
            None => anyhow::bail!(
                "--service-account-kubeconfig {spec:?}: expected NAMESPACE:NAME=PATH or NAMESPACE:NAME@NODE=PATH"
            ),
        }
    }
    let sb = sandbox::start(SandboxOptions {
        listen,
        https_listen,
        ..SandboxOptions::default()
    })
    .await?;
    if !no_crds {
        let crds = uami_api::crds()
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        sb.install(crds)?;
    }
    sb.write_kubeconfig(&kubeconfig, "admin")?;
    println!("Kubernetes API: {} (and {})", sb.url(), sb.https_url());
    println!("kubeconfig:     {}", kubeconfig.display());
    for (ns, name, node, path) in &accounts {
        sb.write_service_account_kubeconfig(path, ns, name, node.as_deref())?;
        println!(
            "kubeconfig of system:serviceaccount:{ns}:{name}: {}",
            path.display()
        );
    }
    let kubeconfig = kubeconfig.display();
    println!("Try: kubectl --kubeconfig {kubeconfig} api-resources");
    shutdown_token().cancelled().await;
    sb.shutdown().await;
    Ok(())
}
