//! A VM or scale set as the emulator keeps it: the model it was declared with (what a PUT or
//! PATCH may change, secrets dropped) and its identity block, rendered as ARM returns it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{IdentityChange, IdentityState};

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
