//! The emulated Azure state: resource groups, identities, role assignments, VMs and scale sets
//! with their pending long-running operations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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

/// VM or scale set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeKind {
    Vm,
    ScaleSet,
}

impl ComputeKind {
    /// The resource type under `Microsoft.Compute`.
    pub fn type_name(self) -> &'static str {
        match self {
            ComputeKind::Vm => "virtualMachines",
            ComputeKind::ScaleSet => "virtualMachineScaleSets",
        }
    }
}

/// A VM or scale set.
#[derive(Clone, Debug)]
pub struct Compute {
    pub kind: ComputeKind,
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub vm_id: String,
    /// Principal id of the system-assigned identity, when enabled.
    pub system_principal: Option<String>,
    /// Assigned user identities: lower-case id -> id as written.
    pub user_assigned: BTreeMap<String, String>,
    /// What each assigned user identity was when it was assigned: lower-case id -> (principal
    /// id, client id). Compute keeps these: an identity deleted and created again under the
    /// same id (a new principal) is still listed with the old ids, and IMDS has no token for
    /// it, until it is removed from the VM and assigned again.
    pub assigned_as: BTreeMap<String, (String, String)>,
    pub etag: u64,
    /// Operation in progress, if any.
    pub pending: Option<String>,
    /// `seq` of the last operation applied.
    pub applied_seq: u64,
    /// Instance names (scale sets).
    pub instances: Vec<String>,
    /// What ARM shows besides the identity.
    pub model: ComputeModel,
}

/// The model of a VM or scale set as its writers left it: what a GET shows besides the
/// identity and the read-only values.
#[derive(Clone, Debug, Default)]
pub struct ComputeModel {
    /// `properties`, without read-only values and secrets.
    pub properties: Value,
    /// Top-level fields besides `properties`: `tags`, `sku`, `zones`, `plan`.
    pub top: serde_json::Map<String, Value>,
    /// When it was created (`properties.timeCreated`).
    pub time_created: String,
    /// The provisioning state while an operation runs: `Creating` or `Updating`.
    pub running_state: &'static str,
}

/// Top-level fields of a VM or scale set its writers set (besides `location` and `identity`).
pub const WRITABLE_TOP_LEVEL: &[&str] = &["tags", "sku", "zones", "plan", "extendedLocation"];

/// Properties Compute computes (read-only), never taken from a request.
const READ_ONLY_PROPERTIES: &[&str] = &[
    "provisioningState",
    "vmId",
    "uniqueId",
    "timeCreated",
    "instanceView",
];

/// Values Compute never returns: passwords, custom data, extensions' protected settings, user
/// data (returned only on request, which the emulator does not serve).
const SECRETS: &[&str] = &[
    "adminPassword",
    "customData",
    "protectedSettings",
    "userData",
];

fn strip_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !SECRETS.contains(&k.as_str()));
            m.values_mut().for_each(strip_secrets);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_secrets),
        _ => {}
    }
}

impl ComputeModel {
    /// A model from a world file's declaration, created now.
    pub fn declared(top: serde_json::Map<String, Value>, properties: Value) -> Self {
        Self {
            properties,
            top,
            time_created: jiff::Timestamp::now().to_string(),
            running_state: "Updating",
        }
    }

    /// `properties` as a writer sent them, kept as Compute keeps them.
    pub fn writable(properties: Option<&Value>) -> Value {
        let mut p = properties
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        if let Some(m) = p.as_object_mut() {
            m.retain(|k, _| !READ_ONLY_PROPERTIES.contains(&k.as_str()));
        }
        strip_secrets(&mut p);
        p
    }

    /// Replace the model with a PUT's `body`.
    pub fn replace(&mut self, body: &Value) {
        self.properties = Self::writable(body.get("properties"));
        self.top = WRITABLE_TOP_LEVEL
            .iter()
            .filter_map(|k| {
                body.get(*k)
                    .filter(|v| !v.is_null())
                    .map(|v| (k.to_string(), v.clone()))
            })
            .collect();
    }

    /// Apply a PATCH's `body`: `properties` merged (a null removes), the top-level fields it
    /// names replaced.
    pub fn patch(&mut self, body: &Value) {
        if let Some(p) = body.get("properties").filter(|p| p.is_object()) {
            merge(&mut self.properties, &Self::writable(Some(p)));
        }
        for k in WRITABLE_TOP_LEVEL {
            match body.get(*k) {
                Some(Value::Null) => {
                    self.top.remove(*k);
                }
                Some(v) => {
                    self.top.insert(k.to_string(), v.clone());
                }
                None => {}
            }
        }
    }
}

/// JSON merge patch (RFC 7396) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Compute {
    /// Id.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{}/{}",
            self.subscription,
            self.resource_group,
            self.kind.type_name(),
            self.name
        )
    }

    /// The `identity.type` of the current state.
    pub fn identity_type(&self) -> &'static str {
        match (
            self.system_principal.is_some(),
            !self.user_assigned.is_empty(),
        ) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        }
    }

    /// The etag as sent (quoted).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    /// The resource body.
    pub fn json(&self, identities: &BTreeMap<String, IdentityState>, tenant: &str) -> Value {
        self.json_with(identities, tenant, None)
    }

    /// The resource body, its identity as `goal` asks when given (the answer to a write whose
    /// operation has not applied it yet).
    pub fn json_with(
        &self,
        identities: &BTreeMap<String, IdentityState>,
        tenant: &str,
        goal: Option<&IdentityChange>,
    ) -> Value {
        let mut v = json!({
            "id": self.id(),
            "name": self.name,
            "type": format!("Microsoft.Compute/{}", self.kind.type_name()),
            "location": self.location,
            "etag": self.etag(),
        });
        for (k, x) in &self.model.top {
            v[k] = x.clone();
        }
        let mut properties = if self.model.properties.is_object() {
            self.model.properties.clone()
        } else {
            json!({})
        };
        let running = match self.model.running_state {
            "" => "Updating",
            s => s,
        };
        properties["provisioningState"] = json!(if self.pending.is_some() {
            running
        } else {
            "Succeeded"
        });
        if !self.model.time_created.is_empty() {
            properties["timeCreated"] = json!(self.model.time_created);
        }
        match self.kind {
            ComputeKind::Vm => properties["vmId"] = json!(self.vm_id),
            ComputeKind::ScaleSet => properties["uniqueId"] = json!(self.vm_id),
        }
        v["properties"] = properties;
        let (system, user_assigned) = match goal {
            Some(g) => (
                g.system.then(|| self.system_principal.clone()),
                &g.user_assigned,
            ),
            None => (self.system_principal.clone().map(Some), &self.user_assigned),
        };
        let type_ = match (system.is_some(), !user_assigned.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        };
        if type_ != "None" {
            let mut identity = json!({"type": type_});
            // A system identity a running operation creates has no principal yet.
            if let Some(Some(p)) = &system {
                identity["principalId"] = json!(p);
                identity["tenantId"] = json!(tenant);
            }
            if !user_assigned.is_empty() {
                let map: serde_json::Map<String, Value> = user_assigned
                    .iter()
                    .map(|(key, id)| {
                        let info = self
                            .assigned_as
                            .get(key)
                            .map(|(p, c)| (p.as_str(), c.as_str()))
                            .or_else(|| {
                                identities
                                    .get(key)
                                    .map(|i| (i.principal_id.as_str(), i.client_id.as_str()))
                            })
                            .map(|(p, c)| json!({"principalId": p, "clientId": c}));
                        (id.clone(), info.unwrap_or_else(|| json!({})))
                    })
                    .collect();
                identity["userAssignedIdentities"] = Value::Object(map);
            }
            v["identity"] = identity;
        }
        v
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
