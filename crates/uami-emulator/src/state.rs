//! The emulated Azure state: resource groups, identities, role assignments, VMs and scale sets
//! with their pending long-running operations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod compute;

pub use compute::{Compute, ComputeKind, ComputeModel, WRITABLE_TOP_LEVEL};

/// A resource group.
#[derive(Clone, Debug)]
pub struct Rg {
    pub subscription: String,
    pub name: String,
    pub location: String,
    pub tags: Value,
}

/// A user-assigned identity.
#[derive(Clone, Debug)]
pub struct IdentityState {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub tags: Value,
    pub client_id: String,
    pub principal_id: String,
    pub tenant_id: String,
    pub created: Instant,
}

impl IdentityState {
    /// The id as ARM returns it (lower-case `resourcegroups`, as the official example shows).
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// The resource body.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id(),
            "name": self.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": self.location,
            "tags": self.tags,
            "properties": {
                "tenantId": self.tenant_id,
                "principalId": self.principal_id,
                "clientId": self.client_id,
            }
        })
    }
}

/// A role assignment.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub name: String,
    pub scope: String,
    pub role_guid: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub effective_at: Instant,
    pub created_on: String,
}

impl Assignment {
    /// Full id.
    pub fn id(&self) -> String {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            self.scope.trim_end_matches('/'),
            self.name
        )
    }

    /// The resource body.
    pub fn json(&self) -> Value {
        let mut props = json!({
            "roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{}", self.role_guid),
            "principalId": self.principal_id,
            "principalType": self.principal_type,
            "scope": self.scope,
            "createdOn": self.created_on,
            "updatedOn": self.created_on,
        });
        if let Some(d) = &self.description {
            props["description"] = json!(d);
        }
        json!({
            "id": self.id(),
            "type": "Microsoft.Authorization/roleAssignments",
            "name": self.name,
            "properties": props,
        })
    }
}

/// A long-running operation.
#[derive(Clone, Debug)]
pub struct Operation {
    pub compute: String,
    pub location: String,
    pub subscription: String,
    /// The identity change to apply when it succeeds.
    pub change: IdentityChange,
    pub polls_left: u32,
    pub fail: bool,
    /// Polls answer 500 until the operation finishes on its own at `due`.
    pub late: bool,
    /// Order of acceptance on its compute: an older operation finishing after a newer one does
    /// not undo it.
    pub seq: u64,
    pub due: Instant,
    pub started: String,
    pub outcome: Option<Result<(), (String, String)>>,
}

/// What a poll found an operation doing.
pub enum Progress<'a> {
    /// No such operation.
    Unknown,
    /// Running, with its status endpoint failing until it finishes on its own.
    Late,
    /// Running.
    Running(&'a Operation),
    /// Finished (`outcome` is set).
    Done(&'a Operation),
}

/// The final identity state a PATCH asked for.
#[derive(Clone, Debug, Default)]
pub struct IdentityChange {
    pub system: bool,
    pub user_assigned: BTreeMap<String, String>,
}

/// The whole state.
#[derive(Default)]
pub struct State {
    pub rgs: BTreeMap<(String, String), Rg>,
    pub identities: BTreeMap<String, IdentityState>,
    pub assignments: BTreeMap<String, Assignment>,
    pub computes: BTreeMap<String, Compute>,
    pub operations: BTreeMap<String, Operation>,
    /// Principals of service principals declared in the world.
    pub service_principals: Vec<String>,
    /// Federated identity credentials by identity key (lower-case id), then lower-case name.
    pub fics: BTreeMap<String, BTreeMap<String, super::arm::fic::Fic>>,
    /// Identities (keys) with a federated identity credential write in progress.
    pub fic_writes: std::collections::HashSet<String>,
}

impl State {
    /// Finish operations whose time has come (also done by polling).
    pub fn settle(&mut self, now: Instant) {
        let due: Vec<String> = self
            .operations
            .iter()
            .filter(|(_, o)| o.outcome.is_none() && now >= o.due)
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            self.finish(&id);
        }
    }

    /// Finish one operation: apply its change, or fail it.
    pub fn finish(&mut self, op_id: &str) {
        let Some(op) = self.operations.get_mut(op_id) else {
            return;
        };
        if op.outcome.is_some() {
            return;
        }
        let key = op.compute.clone();
        if op.fail {
            op.outcome = Some(Err((
                "InternalExecutionError".into(),
                "An internal execution error occurred. Please retry later.".into(),
            )));
        } else {
            op.outcome = Some(Ok(()));
        }
        let change = op.change.clone();
        let failed = op.fail;
        let seq = op.seq;
        if let Some(c) = self.computes.get_mut(&key) {
            if c.pending.as_deref() == Some(op_id) {
                c.pending = None;
            }
            if !failed && seq > c.applied_seq {
                c.applied_seq = seq;
                c.system_principal = match (change.system, c.system_principal.take()) {
                    (true, Some(p)) => Some(p),
                    (true, None) => Some(uuid::Uuid::new_v4().to_string()),
                    (false, _) => None,
                };
                // An identity that stays assigned keeps the ids it was assigned with; one
                // added now is recorded as the directory has it now.
                let identities = &self.identities;
                c.assigned_as = change
                    .user_assigned
                    .keys()
                    .filter_map(|k| {
                        let kept = c
                            .assigned_as
                            .get(k)
                            .filter(|_| c.user_assigned.contains_key(k));
                        let ids = kept.cloned().or_else(|| {
                            identities
                                .get(k)
                                .map(|i| (i.principal_id.clone(), i.client_id.clone()))
                        })?;
                        Some((k.clone(), ids))
                    })
                    .collect();
                c.user_assigned = change.user_assigned;
                c.etag += 1;
            }
        }
    }

    /// One poll of an operation: a running operation counts down its polls and finishes when
    /// they run out.
    pub fn progress(&mut self, op_id: &str) -> Progress<'_> {
        let running = match self.operations.get_mut(op_id) {
            None => return Progress::Unknown,
            Some(op) if op.outcome.is_some() => false,
            Some(op) if op.late => return Progress::Late,
            Some(op) if op.polls_left > 0 => {
                op.polls_left -= 1;
                true
            }
            Some(_) => {
                self.finish(op_id);
                false
            }
        };
        match self.operations.get(op_id) {
            None => Progress::Unknown,
            Some(op) if running => Progress::Running(op),
            Some(op) => Progress::Done(op),
        }
    }

    /// Whether `principal` exists in the directory.
    pub fn principal_exists(&self, principal: &str) -> bool {
        self.service_principals
            .iter()
            .any(|p| p.eq_ignore_ascii_case(principal))
            || self
                .identities
                .values()
                .any(|i| i.principal_id.eq_ignore_ascii_case(principal))
            || self.computes.values().any(|c| {
                c.system_principal
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(principal))
            })
    }

    /// The identity with this client id.
    pub fn identity_by_client(&self, client_id: &str) -> Option<(&String, &IdentityState)> {
        self.identities
            .iter()
            .find(|(_, i)| i.client_id.eq_ignore_ascii_case(client_id))
    }

    /// The user identities assigned to compute `c` that work there: those whose principal is
    /// still the one they were assigned with.
    pub fn working_identities(&self, c: &Compute) -> Vec<&IdentityState> {
        c.user_assigned
            .keys()
            .filter_map(|k| {
                let i = self.identities.get(k)?;
                let same = c
                    .assigned_as
                    .get(k)
                    .is_none_or(|(p, _)| p.eq_ignore_ascii_case(&i.principal_id));
                same.then_some(i)
            })
            .collect()
    }

    /// The identity with this principal id.
    pub fn identity_by_principal(&self, principal: &str) -> Option<&IdentityState> {
        self.identities
            .values()
            .find(|i| i.principal_id.eq_ignore_ascii_case(principal))
    }
}

/// Default LRO completion when nobody polls.
pub const LRO_DEADLINE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/subscriptions/s/resourcegroups/devtest/providers/microsoft.managedidentity/userassignedidentities/app";

    fn identity(principal: &str, client: &str) -> IdentityState {
        IdentityState {
            subscription: "s".into(),
            resource_group: "DevTest".into(),
            name: "app".into(),
            location: "eastus".into(),
            tags: json!({}),
            client_id: client.into(),
            principal_id: principal.into(),
            tenant_id: "t".into(),
            created: Instant::now(),
        }
    }

    /// Run an operation on VM `vm` that leaves exactly `assigned` on it.
    fn write(st: &mut State, seq: u64, assigned: &[&str]) {
        let op = Operation {
            compute: "vm".into(),
            location: "eastus".into(),
            subscription: "s".into(),
            change: IdentityChange {
                system: false,
                user_assigned: assigned
                    .iter()
                    .map(|k| (k.to_string(), k.to_string()))
                    .collect(),
            },
            polls_left: 0,
            fail: false,
            late: false,
            seq,
            due: Instant::now(),
            started: String::new(),
            outcome: None,
        };
        st.operations.insert(format!("op{seq}"), op);
        st.finish(&format!("op{seq}"));
    }

    fn listed(st: &State) -> Value {
        let vm = &st.computes["vm"];
        vm.json(&st.identities, "t")["identity"]["userAssignedIdentities"][KEY].clone()
    }

    #[test]
    fn a_vm_keeps_the_ids_of_an_identity_deleted_and_created_again_until_assigned_again() {
        let mut st = State::default();
        st.identities.insert(KEY.into(), identity("p1", "c1"));
        st.computes.insert(
            "vm".into(),
            Compute {
                kind: ComputeKind::Vm,
                subscription: "s".into(),
                resource_group: "DevTest".into(),
                name: "vm".into(),
                location: "eastus".into(),
                vm_id: "v".into(),
                system_principal: None,
                user_assigned: BTreeMap::new(),
                assigned_as: BTreeMap::new(),
                etag: 0,
                pending: None,
                applied_seq: 0,
                instances: Vec::new(),
                model: ComputeModel::default(),
            },
        );
        write(&mut st, 1, &[KEY]);
        assert_eq!(listed(&st)["principalId"], "p1");
        assert_eq!(st.working_identities(&st.computes["vm"]).len(), 1);
        // Deleted and created again under the same id: a new principal and client id.
        st.identities.insert(KEY.into(), identity("p2", "c2"));
        assert_eq!(listed(&st)["principalId"], "p1");
        assert_eq!(listed(&st)["clientId"], "c1");
        assert!(st.working_identities(&st.computes["vm"]).is_empty());
        // Assigning it again while it is listed changes nothing.
        write(&mut st, 2, &[KEY]);
        assert_eq!(listed(&st)["principalId"], "p1");
        // Removed, then assigned again: the new ids, and IMDS knows it.
        write(&mut st, 3, &[]);
        assert!(listed(&st).is_null());
        write(&mut st, 4, &[KEY]);
        assert_eq!(listed(&st)["principalId"], "p2");
        assert_eq!(st.working_identities(&st.computes["vm"]).len(), 1);
    }
}
