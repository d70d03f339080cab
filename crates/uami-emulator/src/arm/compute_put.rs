//! `PUT` of a VM or scale set (`VirtualMachines_CreateOrUpdate`,
//! `VirtualMachineScaleSets_CreateOrUpdate`): created (201, `Creating`) or its model replaced
//! (200, `Updating`), as a long-running operation with an `Azure-AsyncOperation` to poll; the
//! body checked for what the Compute 2024-11-01 specification requires; and `POST .../restart`,
//! an operation whose specification allows a 202 answer.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::compute::{
    another_operation, compute_missing, requested_change, running_goal, start_operation, written,
};
use super::groups::group;
use super::{Answer, bad_request, lro};
use crate::Inner;
use crate::knobs::LroForm;
use crate::state::{Compute, ComputeKind, ComputeModel, State as Az};
use crate::tokens::Claims;

/// Where the specification requires a field: (path to an object or an array of objects below
/// the model's root, the required field). The root is `properties` of a VM and
/// `properties.virtualMachineProfile` of a scale set.
const REQUIRED: &[(&str, &str)] = &[
    ("storageProfile.osDisk", "createOption"),
    ("storageProfile.dataDisks[]", "lun"),
    ("storageProfile.dataDisks[]", "createOption"),
    ("networkProfile.networkInterfaceConfigurations[]", "name"),
    (
        "networkProfile.networkInterfaceConfigurations[]",
        "properties",
    ),
    (
        "networkProfile.networkInterfaceConfigurations[].properties",
        "ipConfigurations",
    ),
    (
        "networkProfile.networkInterfaceConfigurations[].properties.ipConfigurations[]",
        "name",
    ),
    (
        "applicationProfile.galleryApplications[]",
        "packageReferenceId",
    ),
];

/// The values at `path` (dotted, `[]` for every element of an array) below `root`.
fn at<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut found = vec![root];
    for part in path.split('.') {
        let (name, each) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        found = found
            .into_iter()
            .filter_map(|v| v.get(name))
            .flat_map(|v| match (each, v) {
                (true, Value::Array(a)) => a.iter().collect::<Vec<_>>(),
                (true, _) => Vec::new(),
                (false, v) if v.is_null() => Vec::new(),
                (false, v) => vec![v],
            })
            .collect();
    }
    found
}

/// Compute's answer to a required parameter that is missing.
fn missing(name: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": {
            "code": "InvalidParameter",
            "message": format!("Required parameter '{name}' is missing (null)."),
            "target": name,
        }}),
    )
}

/// The first required field `body` lacks, as Compute names it; `creating` adds what a new VM
/// needs (its disks, network and, from an image, its OS profile).
fn check_required(
    kind: ComputeKind,
    body: &Value,
    creating: bool,
) -> Result<(), (StatusCode, Value)> {
    let root = match kind {
        ComputeKind::Vm => body.get("properties"),
        ComputeKind::ScaleSet => body
            .get("properties")
            .and_then(|p| p.get("virtualMachineProfile")),
    };
    let Some(root) = root.filter(|r| r.is_object()) else {
        return match (kind, creating) {
            (ComputeKind::Vm, true) => Err(missing("storageProfile")),
            _ => Ok(()),
        };
    };
    for (path, field) in REQUIRED {
        for v in at(root, path) {
            if v.get(*field).is_none_or(Value::is_null) {
                let parent = path
                    .rsplit('.')
                    .next()
                    .unwrap_or(path)
                    .trim_end_matches("[]");
                return Err(missing(&format!("{parent}.{field}")));
            }
        }
    }
    if creating && kind == ComputeKind::Vm {
        for section in ["storageProfile", "networkProfile"] {
            if root.get(section).is_none_or(Value::is_null) {
                return Err(missing(section));
            }
        }
        let from_image = root["storageProfile"]["osDisk"]["createOption"]
            .as_str()
            .is_none_or(|o| o.eq_ignore_ascii_case("FromImage"));
        if from_image && root.get("osProfile").is_none_or(Value::is_null) {
            return Err(missing("osProfile"));
        }
    }
    Ok(())
}

/// What a PUT names: the VM or scale set and where it lives.
pub(super) struct Target<'a> {
    pub kind: ComputeKind,
    pub sub: &'a str,
    pub rg: &'a str,
    pub name: &'a str,
    pub scope: &'a str,
}

/// `PUT` of a VM or scale set.
pub(super) fn compute_put(
    inner: &Inner,
    st: &mut Az,
    claims: &Claims,
    t: &Target<'_>,
    headers: &HeaderMap,
    body: Option<&Value>,
    now: Instant,
) -> Answer {
    let key = t.scope.to_lowercase();
    let existing = st.computes.get(&key).cloned();
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let precondition = match (&existing, header("if-none-match"), header("if-match")) {
        (Some(_), Some("*"), _) => Some("If-None-Match = *".to_string()),
        (None, _, Some(m)) => Some(format!("If-Match = {m}")),
        (Some(c), _, Some(m)) if m != "*" && m != c.etag() => Some(format!("If-Match = {m}")),
        _ => None,
    };
    if let Some(p) = precondition {
        return super::precondition_failed(&p).into();
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return super::invalid_content().into();
    };
    let Some(location) = body["location"].as_str() else {
        return bad_request(
            "LocationRequired",
            "The location property is required for this definition.",
        )
        .into();
    };
    let normalized = |l: &str| l.replace(' ', "").to_lowercase();
    if let Some(c) = &existing
        && normalized(&c.location) != normalized(location)
    {
        return bad_request(
            "InvalidResourceLocation",
            &format!(
                "The resource '{}' already exists in location '{}' in resource group '{}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.",
                c.name, c.location, c.resource_group
            ),
        )
        .into();
    }
    if let Err(refused) = check_required(t.kind, body, existing.is_none()) {
        return refused.into();
    }
    let c = match existing {
        Some(c) => {
            if let Some(busy) = another_operation(inner, &c, "PUT") {
                return busy.into();
            }
            c
        }
        None => {
            let rg = match group(st, t.sub, t.rg) {
                Ok(rg) => rg,
                Err(missing) => return missing.into(),
            };
            Compute {
                kind: t.kind,
                subscription: rg.subscription.clone(),
                resource_group: rg.name.clone(),
                name: t.name.to_string(),
                location: location.to_string(),
                vm_id: uuid::Uuid::new_v4().to_string(),
                system_principal: None,
                user_assigned: Default::default(),
                assigned_as: Default::default(),
                etag: 0,
                pending: None,
                applied_seq: 0,
                instances: Vec::new(),
                model: ComputeModel::declared(Default::default(), json!({})),
            }
        }
    };
    let change = match requested_change(st, claims, t.scope, &c, body, now) {
        Ok(change) => change,
        Err(refused) => return refused.into(),
    };
    let (status, running) = if c.etag == 0 {
        (StatusCode::CREATED, "Creating")
    } else {
        (StatusCode::OK, "Updating")
    };
    let mut stored = c.clone();
    stored.model.replace(body);
    stored.model.running_state = running;
    st.computes.insert(key.clone(), stored);
    let op_id = start_operation(inner, st, &key, &c, change.clone(), now);
    written(inner, st, &key, &op_id, &change, status)
}

/// `POST .../restart` of a VM or scale set: 202 and an operation to poll, in the form the
/// `lroForms` knob picks (its specification allows 202).
pub(super) fn compute_restart(inner: &Inner, st: &mut Az, scope: &str, now: Instant) -> Answer {
    let key = scope.to_lowercase();
    let Some(c) = st.computes.get(&key).cloned() else {
        return compute_missing(scope).into();
    };
    let goal = running_goal(st, &c);
    if let Some(cm) = st.computes.get_mut(&key) {
        cm.model.running_state = "Updating";
    }
    let op_id = start_operation(inner, st, &key, &c, goal, now);
    let operation = match c.kind {
        ComputeKind::Vm => "VirtualMachines_Restart",
        ComputeKind::ScaleSet => "VirtualMachineScaleSets_Restart",
    };
    if inner.knobs.lock().lro_form(operation) == LroForm::Location {
        return lro::accepted(inner, &c.subscription, &c.location, &op_id);
    }
    Answer {
        status: StatusCode::ACCEPTED,
        body: Value::Null,
        headers: vec![
            (
                "azure-asyncoperation",
                lro::operation_url(inner, &c.subscription, &c.location, &op_id, false),
            ),
            (
                "retry-after",
                inner.world.lro_retry_after_seconds.to_string(),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_fields_follow_the_specification() {
        let vm = |properties: Value| json!({"location": "eastus", "properties": properties});
        let complete = json!({
            "storageProfile": {"imageReference": {"publisher": "p"}, "osDisk": {"createOption": "FromImage"}},
            "osProfile": {"computerName": "vm", "adminUsername": "u"},
            "networkProfile": {"networkInterfaces": [{"id": "/nic"}]},
        });
        assert!(check_required(ComputeKind::Vm, &vm(complete.clone()), true).is_ok());
        let mut no_lun = complete.clone();
        no_lun["storageProfile"]["dataDisks"] = json!([{"createOption": "Empty"}]);
        let (_, e) = check_required(ComputeKind::Vm, &vm(no_lun), false).unwrap_err();
        assert_eq!(e["error"]["target"], "dataDisks.lun");
        let mut no_network = complete.clone();
        no_network.as_object_mut().unwrap().remove("networkProfile");
        assert!(check_required(ComputeKind::Vm, &vm(no_network.clone()), false).is_ok());
        let (_, e) = check_required(ComputeKind::Vm, &vm(no_network), true).unwrap_err();
        assert_eq!(e["error"]["target"], "networkProfile");
        let ss = json!({"location": "eastus", "properties": {"virtualMachineProfile": {
            "networkProfile": {"networkInterfaceConfigurations": [{"name": "nic", "properties": {"ipConfigurations": [{}]}}]},
        }}});
        let (_, e) = check_required(ComputeKind::ScaleSet, &ss, true).unwrap_err();
        assert_eq!(e["error"]["target"], "ipConfigurations.name");
    }
}
