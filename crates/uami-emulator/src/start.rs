//! Starting the emulator: the initial state from the world, the ARM and Entra ID listener (HTTPS
//! with a certificate authority made here, as Azure SDKs send tokens only over HTTPS; plain HTTP
//! when the world asks for it), and one plain-HTTP IMDS listener per VM and scale set instance,
//! as IMDS is in Azure.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use uami_local_tls::LocalCa;

use super::state::{Assignment, Compute, ComputeKind, ComputeModel, Rg, State};
use super::{
    ADMIN_PRINCIPAL, Counts, Emulator, EmulatorError, Inner, World, admin, imds, rbac, world,
};

/// Start the emulator: ARM and Entra ID on the world's listen address (one listener, as their
/// routes do not overlap), one IMDS per VM and scale set instance.
pub async fn start(world: World) -> Result<Emulator, EmulatorError> {
    let state = initial_state(&world)?;
    let seed = world.faults.seed;
    let http = super::aad::issuer_client(&world).map_err(EmulatorError::World)?;
    let inner = Arc::new(Inner {
        faults: Mutex::new(world.faults.clone()),
        knobs: Mutex::new(world.knobs.clone()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        state: Mutex::new(state),
        counts: Mutex::new(Counts::default()),
        journal: Mutex::new(Vec::new()),
        tokens: Mutex::new(Vec::new()),
        key: uuid::Uuid::new_v4().as_bytes().to_vec(),
        arm_base: Mutex::new(String::new()),
        buckets: Mutex::new(HashMap::new()),
        imds_stats: Mutex::new(BTreeMap::new()),
        injected: Mutex::new(BTreeMap::new()),
        started: Instant::now(),
        http,
        world,
    });
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let (listener, arm_addr) = bind(inner.world.listen).await?;
    let ca = if inner.world.plain_http {
        None
    } else {
        Some(LocalCa::for_loopback("uami-controller emulator CA").map_err(EmulatorError::Tls)?)
    };
    let scheme = if ca.is_some() { "https" } else { "http" };
    let arm_url = url::Url::parse(&format!("{scheme}://{arm_addr}/")).map_err(|source| {
        EmulatorError::Url {
            addr: arm_addr,
            source,
        }
    })?;
    *inner.arm_base.lock() = arm_url.to_string();
    let app = admin::app(inner.clone());
    tasks.push(match &ca {
        Some(ca) => ca.serve(listener, app, stop.clone()),
        None => serve(listener, app, stop.clone()),
    });

    let mut imds = BTreeMap::new();
    let mut endpoints: Vec<(String, String, SocketAddr)> = Vec::new();
    for sub in &inner.world.subscriptions {
        for rg in &sub.resource_groups {
            let id = |kind: ComputeKind, name: &str| {
                format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{}/{name}",
                    sub.id,
                    rg.name,
                    kind.type_name()
                )
                .to_lowercase()
            };
            for vm in &rg.virtual_machines {
                let id = id(ComputeKind::Vm, &vm.name);
                endpoints.push((vm.name.clone(), id, vm.imds_listen));
            }
            for ss in &rg.virtual_machine_scale_sets {
                let id = id(ComputeKind::ScaleSet, &ss.name);
                for i in 0..ss.instances {
                    endpoints.push((
                        format!("{}_{i}", ss.name),
                        id.clone(),
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                    ));
                }
            }
        }
    }
    for (name, compute, addr) in endpoints {
        let (l, local) = bind(addr).await?;
        inner
            .imds_stats
            .lock()
            .insert(name.clone(), imds::Limiter::default());
        tasks.push(serve(
            l,
            imds::app(inner.clone(), name.clone(), compute),
            stop.clone(),
        ));
        imds.insert(name, local);
    }
    Ok(Emulator {
        inner,
        arm_url,
        ca_pem: ca.map(|ca| ca.ca_pem().to_string()),
        imds,
        stop,
        tasks,
    })
}

/// A listener on `addr` and the address it got.
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), EmulatorError> {
    let bound = |source| EmulatorError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    })
}

/// The Azure state the world describes, with the emulator's administrator as Owner at `/`.
fn initial_state(world: &World) -> Result<State, EmulatorError> {
    let mut st = State::default();
    let now = Instant::now();
    st.service_principals = world
        .service_principals
        .iter()
        .map(|s| s.principal_id.clone())
        .collect();
    st.service_principals.push(ADMIN_PRINCIPAL.to_string());
    for sub in &world.subscriptions {
        for rg in &sub.resource_groups {
            st.rgs.insert(
                (sub.id.to_lowercase(), rg.name.to_lowercase()),
                Rg {
                    subscription: sub.id.clone(),
                    name: rg.name.clone(),
                    location: rg.location.clone(),
                    tags: json!({}),
                },
            );
            let compute = |kind, name: &str, system_assigned: bool, instances| Compute {
                kind,
                subscription: sub.id.clone(),
                resource_group: rg.name.clone(),
                name: name.to_string(),
                location: rg.location.clone(),
                vm_id: uuid::Uuid::new_v4().to_string(),
                system_principal: system_assigned.then(|| uuid::Uuid::new_v4().to_string()),
                user_assigned: BTreeMap::new(),
                assigned_as: Default::default(),
                etag: 1,
                pending: None,
                applied_seq: 0,
                instances,
                model: ComputeModel::default(),
            };
            let vm_model = |(top, properties)| ComputeModel::declared(top, properties);
            let vms = rg.virtual_machines.iter().map(|vm| Compute {
                model: vm_model(vm.arm_model(&sub.id, &rg.name)),
                ..compute(ComputeKind::Vm, &vm.name, vm.system_assigned, Vec::new())
            });
            let scale_sets = rg.virtual_machine_scale_sets.iter().map(|ss| {
                let instances = (0..ss.instances)
                    .map(|i| format!("{}_{i}", ss.name))
                    .collect();
                Compute {
                    model: vm_model(ss.arm_model(&sub.id, &rg.name)),
                    ..compute(
                        ComputeKind::ScaleSet,
                        &ss.name,
                        ss.system_assigned,
                        instances,
                    )
                }
            });
            for c in vms.chain(scale_sets) {
                st.computes.insert(c.id().to_lowercase(), c);
            }
        }
    }
    let mut initial = world.role_assignments.clone();
    initial.push(world::InitialAssignment {
        principal_id: ADMIN_PRINCIPAL.into(),
        role: "Owner".into(),
        scope: "/".into(),
    });
    for (i, a) in initial.iter().enumerate() {
        let role = rbac::find(&a.role).ok_or_else(|| {
            EmulatorError::World(format!("roleAssignments[{i}]: unknown role {}", a.role))
        })?;
        let name = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}|{}|{}", a.scope, a.principal_id, role.guid).as_bytes(),
        )
        .to_string();
        let asg = Assignment {
            name,
            scope: if a.scope == "/" {
                "/".into()
            } else {
                a.scope.trim_end_matches('/').to_string()
            },
            role_guid: role.guid.to_string(),
            principal_id: a.principal_id.clone(),
            principal_type: "ServicePrincipal".into(),
            description: None,
            effective_at: now,
            created_on: jiff::Timestamp::now().to_string(),
        };
        st.assignments.insert(asg.id().to_lowercase(), asg);
    }
    Ok(st)
}
