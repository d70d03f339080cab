//! One chaos run: convergence and deletion with kills, then the invariants from Azure's state
//! and journal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::harness::*;
use crate::support::*;

pub async fn run(s: Scenario, name: &str) -> Report {
    let mut report = Report {
        seed: s.seed,
        ..Report::default()
    };
    let mut rng = StdRng::seed_from_u64(s.seed);
    let stack = start_stack_on(s.vms, s.external.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let oob = out_of_band_identity(&stack).await;
    let oob_id = oob["id"].as_str().unwrap().to_lowercase();
    let oob_principal = oob["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();

    let log = std::env::temp_dir().join(format!("chaos-{name}-{}.log", s.seed));
    // What a failure names, to run the scenario again and read what the controller did.
    let context = format!("seed {}; log {}", s.seed, log.display());
    let _ = std::fs::remove_file(&log);
    let mut ctl = ControllerProcess::new(
        controller_args(&stack, dir.path(), "controller", s.arm_timeout),
        log.clone(),
    );
    stack.emulator.set_faults(s.faults.clone());
    if let Some(sb) = stack.sandbox() {
        sb.set_watch_faults(s.watch.clone());
    }
    ctl.start();
    let started = Instant::now();
    if s.shared_azure_names {
        // The first namespace's identities exist before the others ask for the same names.
        stack
            .apply_yaml(&objects_yaml_in(&s, &s.namespaces[..1]))
            .await
            .unwrap();
        for i in 0..s.sets {
            ready(
                &identities(&stack, &s.namespaces[0]),
                &format!("id-{i}"),
                120,
            )
            .await;
        }
    }
    // Ready as a dashboard sees it: once True, an object stays Ready through the kills and
    // Azure's passing faults.
    let mut flaps = crate::support::flaps::Flaps::start(&stack.client(), &s.namespaces);
    stack.apply_yaml(&objects_yaml(&s)).await.unwrap();
    let expected = s.namespaces.len() * s.sets * 3;

    // Convergence, with kills.
    let namespaces = s.namespaces.clone();
    let sc = s.clone();
    let stack_ref = &stack;
    report.kills_converging = kill_while(
        &mut ctl,
        &mut rng,
        s.kills_converging,
        s.kill_within,
        s.deadline,
        "convergence",
        || {
            let namespaces = namespaces.clone();
            let sc = sc.clone();
            async move {
                let objs = all_objects(stack_ref, &namespaces).await;
                objs.len() == expected
                    && objs.iter().all(|(_, o)| {
                        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                        !must_be_ready(&sc, ns) || is_ready(o)
                    })
            }
        },
    )
    .await
    .unwrap_or_else(|| {
        let _ = std::fs::write(
            log.with_extension("journal.json"),
            serde_json::to_string_pretty(&stack.emulator.journal()).unwrap_or_default(),
        );
        panic!(
            "not converged ({context}): {:?}",
            not_ready(&s, &futures_block(all_objects(&stack, &s.namespaces)))
        )
    });
    report.time_to_ready = started.elapsed();
    report.objects = expected;
    // A few agent intervals more with the faults still on: nothing that was Ready flaps.
    tokio::time::sleep(Duration::from_secs(6)).await;
    flaps.stop();
    report.flaps = flaps.flaps();
    assert!(
        report.flaps.is_empty(),
        "Ready flapped ({context}): {:?}",
        report.flaps
    );

    // Invariants once Ready, from Azure's state.
    let _ = std::fs::write(
        log.with_extension("ready.journal.json"),
        serde_json::to_string_pretty(&stack.emulator.journal()).unwrap(),
    );
    let objs = all_objects(&stack, &s.namespaces).await;
    let state = stack.emulator.state();
    let mut created = Created::default();
    let az_identities = state["identities"].as_array().unwrap().clone();
    let az_assignments = state["roleAssignments"].as_array().unwrap().clone();
    let mut want_on_vm: BTreeMap<String, BTreeSet<String>> =
        (0..s.vms).map(|i| (vm(i), BTreeSet::new())).collect();
    want_on_vm.get_mut(&vm(0)).unwrap().insert(oob_id.clone());
    for (kind, o) in &objs {
        let ns = o["metadata"]["namespace"].as_str().unwrap();
        let n = o["metadata"]["name"].as_str().unwrap();
        if !must_be_ready(&s, ns) {
            assert!(
                !is_ready(o),
                "{kind} {ns}/{n} shares an Azure name with another namespace and must not be Ready"
            );
            continue;
        }
        match kind.as_str() {
            "UserAssignedIdentity" => {
                let id = o["status"]["resourceId"].as_str().unwrap().to_lowercase();
                let principal = o["status"]["principalId"].as_str().unwrap().to_string();
                let same: Vec<&Value> = az_identities
                    .iter()
                    .filter(|i| i["id"].as_str().unwrap().to_lowercase() == id)
                    .collect();
                if same.len() != 1
                    || same[0]["properties"]["principalId"].as_str() != Some(principal.as_str())
                {
                    report.duplicates.push(format!(
                        "{ns}/{n}: {} Azure identities for {id}",
                        same.len()
                    ));
                }
                created.identity_ids.insert(id);
                created.principals.insert(principal);
            }
            "RoleGrant" => {
                let principal = o["status"]["principalId"].as_str().unwrap().to_lowercase();
                assert_eq!(
                    o["status"]["adopted"],
                    json!(false),
                    "{ns}/{n} adopted its own assignment"
                );
                let n_assign = az_assignments
                    .iter()
                    .filter(|a| {
                        a["properties"]["principalId"]
                            .as_str()
                            .unwrap()
                            .to_lowercase()
                            == principal
                    })
                    .count();
                let identity = objs.iter().find(|(k, i)| {
                    k == "UserAssignedIdentity"
                        && i["metadata"]["namespace"] == ns
                        && i["metadata"]["name"] == o["spec"]["identityRef"]["name"]
                });
                if let (Some(a), Some(identity)) = (
                    az_assignments.iter().find(|a| {
                        a["properties"]["principalId"]
                            .as_str()
                            .unwrap()
                            .to_lowercase()
                            == principal
                    }),
                    identity,
                ) {
                    created.assignments.insert(
                        identity.1["status"]["resourceId"]
                            .as_str()
                            .unwrap()
                            .to_lowercase(),
                        a["id"].as_str().unwrap().to_lowercase(),
                    );
                }
                if n_assign != 1 {
                    report.duplicates.push(format!(
                        "{ns}/{n}: {n_assign} role assignments for principal {principal}"
                    ));
                }
            }
            _ => {
                let target = o["spec"]["target"]["virtualMachine"]["name"]
                    .as_str()
                    .unwrap();
                let identity = objs
                    .iter()
                    .find(|(k, i)| {
                        k == "UserAssignedIdentity"
                            && i["metadata"]["namespace"] == ns
                            && i["metadata"]["name"] == o["spec"]["identityRef"]["name"]
                    })
                    .unwrap();
                let id = identity.1["status"]["resourceId"]
                    .as_str()
                    .unwrap()
                    .to_lowercase();
                assert_eq!(o["status"]["assigned"], json!(true), "{ns}/{n}");
                assert_eq!(
                    o["status"]["adopted"],
                    json!(false),
                    "{ns}/{n} adopted the assignment it made itself (seed {})",
                    s.seed
                );
                want_on_vm.get_mut(target).unwrap().insert(id);
            }
        }
    }
    for (vm_name, want) in &want_on_vm {
        let have = vm_identities(&state, vm_name);
        assert_eq!(
            &have, want,
            "{vm_name} must hold exactly its bound identities and the out-of-band one ({context})"
        );
    }
    assert!(
        report.duplicates.is_empty(),
        "duplicates (seed {}): {:?}",
        s.seed,
        report.duplicates
    );

    // Deletion, with kills.
    let started = Instant::now();
    for ns in &s.namespaces {
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        bindings(&stack, ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        grants(&stack, ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        identities(&stack, ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
    }
    report.kills_deleting = kill_while(
        &mut ctl,
        &mut rng,
        s.kills_deleting,
        s.kill_within,
        s.deadline,
        "deletion",
        || {
            let namespaces = namespaces.clone();
            async move { all_objects(stack_ref, &namespaces).await.is_empty() }
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "not deleted ({context}): {:?}",
            futures_block(all_objects(&stack, &s.namespaces))
                .iter()
                .map(|(k, o)| format!(
                    "{k} {}/{}: {}",
                    o["metadata"]["namespace"],
                    o["metadata"]["name"],
                    reason(o)
                ))
                .collect::<Vec<_>>()
        )
    });
    report.time_to_deleted = started.elapsed();
    // Give late long-running operations their time, then look at what is left.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ctl.stop();
    let state = stack.emulator.state();
    for i in state["identities"].as_array().unwrap() {
        let id = i["id"].as_str().unwrap().to_lowercase();
        if id != oob_id {
            report.orphans.push(format!("identity {id}"));
        }
    }
    for a in state["roleAssignments"].as_array().unwrap() {
        let p = a["properties"]["principalId"]
            .as_str()
            .unwrap()
            .to_lowercase();
        if created.principals.contains(&p) {
            report.orphans.push(format!("role assignment {}", a["id"]));
        }
    }
    for i in 0..s.vms {
        for id in vm_identities(&state, &vm(i)) {
            if id != oob_id || i != 0 {
                report.orphans.push(format!("{} still holds {id}", vm(i)));
            }
        }
    }
    let oob_now = state["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"].as_str().unwrap().to_lowercase() == oob_id)
        .cloned()
        .expect("the out-of-band identity still exists");
    assert_eq!(oob_now["properties"]["principalId"], json!(oob_principal));
    assert_eq!(oob_now["tags"], json!({"team": "ops"}), "untouched");
    assert!(
        vm_identities(&state, &vm(0)).contains(&oob_id),
        "still on vm-0"
    );

    // Deletion order, from the journal: an identity is deleted only after its role assignment
    // was deleted and a VM PATCH removed it.
    let journal = stack.emulator.journal();
    let _ = std::fs::write(
        log.with_extension("journal.json"),
        serde_json::to_string_pretty(&journal).unwrap(),
    );
    let applied = |e: &uami_emulator::Exchange| {
        matches!(e.status, 200 | 201 | 204)
            || e.fault
                .as_deref()
                .is_some_and(|f| f.starts_with("appliedThen"))
    };
    for (n, ex) in journal.iter().enumerate() {
        if ex.operation != "UserAssignedIdentities_Delete" || !applied(ex) {
            continue;
        }
        let id = ex.path.to_lowercase();
        let Some(assignment) = created.assignments.get(&id) else {
            continue;
        };
        let before = &journal[..n];
        assert!(
            before
                .iter()
                .any(|e| e.operation == "RoleAssignments_Delete"
                    && e.path.to_lowercase() == *assignment
                    && applied(e)),
            "identity {id} deleted before its role assignment {assignment} (seed {})",
            s.seed
        );
        assert!(
            before
                .iter()
                .any(|e| e.operation == "VirtualMachines_Update"
                    && applied(e)
                    && e.request.as_ref().is_some_and(|r| {
                        // `null` removes one identity; a type without UserAssigned removes all.
                        matches!(
                            r["identity"]["type"].as_str(),
                            Some("None" | "SystemAssigned")
                        ) || r["identity"]["userAssignedIdentities"]
                            .as_object()
                            .is_some_and(|m| {
                                m.iter().any(|(k, v)| k.to_lowercase() == id && v.is_null())
                            })
                    })),
            "identity {id} deleted before a VM PATCH removed it (seed {})",
            s.seed
        );
    }
    report.injected = stack.emulator.injected();
    let (closed, gone) = stack
        .sandbox()
        .map_or((0, 0), |sb| sb.watch_faults_injected());
    report.watches_closed = closed;
    report.resumes_gone = gone;
    report.print(name);
    assert!(
        report.orphans.is_empty(),
        "orphans ({context}): {:?}",
        report.orphans
    );
    stack.stop().await;
    report
}

pub fn scenario(seed: u64, sets: usize, vms: usize, kills: (u32, u32)) -> Scenario {
    Scenario {
        seed,
        namespaces: vec!["chaos".into()],
        sets,
        vms,
        kills_converging: kills.0,
        kills_deleting: kills.1,
        faults: realistic_faults(seed),
        watch: realistic_watch(seed),
        shared_azure_names: false,
        deadline: Duration::from_secs(240),
        kill_within: Duration::from_secs(4),
        arm_timeout: "3s",
        external: None,
    }
}
