//! Behaviour knobs: how the emulator answers where real ARM has more than one form. Set under
//! `knobs:` in the world file and changed at run time through `PUT /_emulator/knobs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Page size when the knob is not set.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The form of a long-running operation's answer (ARM-NOTES §2.4, D3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LroForm {
    /// `200` with the resource and an `Azure-AsyncOperation` URL that answers
    /// `{"status": "InProgress" | "Succeeded" | "Failed"}`.
    #[default]
    AzureAsyncOperation,
    /// `202` with a `Location` URL that answers 202 while running and 200 when done.
    Location,
}

/// The long-running operations the emulator serves, and whether their specification
/// (Compute 2024-11-01 `responses`) allows a 202 answer: only those may answer in the
/// `Location` form. CreateOrUpdate answers 200/201 and Update only 200.
pub const LRO_OPERATIONS: &[(&str, bool)] = &[
    ("VirtualMachines_CreateOrUpdate", false),
    ("VirtualMachines_Update", false),
    ("VirtualMachines_Restart", true),
    ("VirtualMachineScaleSets_CreateOrUpdate", false),
    ("VirtualMachineScaleSets_Update", false),
    ("VirtualMachineScaleSets_Restart", true),
];

/// Whether `operation`'s specification allows a 202 answer.
fn allows_accepted(operation: &str) -> bool {
    LRO_OPERATIONS
        .iter()
        .any(|(op, accepted)| *op == operation && *accepted)
}

/// The knobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Knobs {
    /// LRO form by operation id (of [`LRO_OPERATIONS`]); `AzureAsyncOperation` when absent.
    /// `Location` only for an operation whose specification allows 202.
    pub lro_forms: BTreeMap<String, LroForm>,
    /// Items per page of every list (`nextLink` leads to the next); 0 means 100.
    pub page_size: usize,
    /// Base URL written into `nextLink`, `Azure-AsyncOperation` and `Location` instead of the
    /// emulator's own ARM URL (to test that clients refuse links to another origin).
    pub link_base: Option<String>,
    /// Error answers also carry `details` and an `innererror` with an exception dump, as
    /// Compute's `CloudError` allows; clients must show only `code` and `message`.
    pub inner_errors: bool,
}

/// Text of the exception dump in `innererror` when `innerErrors` is on (tests search for it).
pub const INNER_ERROR_DUMP: &str = "emulator-inner-error-dump";

/// Add `details` and `innererror` to an ARM error envelope.
pub fn add_inner_error(body: &mut serde_json::Value) {
    if let Some(error) = body.get_mut("error").and_then(|e| e.as_object_mut()) {
        error.insert(
            "details".into(),
            serde_json::json!([{"code": "InternalDiagnostics", "message": format!("{INNER_ERROR_DUMP}: request trace 0f1e2d3c")}]),
        );
        error.insert(
            "innererror".into(),
            serde_json::json!({
                "exceptiontype": "System.InvalidOperationException",
                "errordetail": format!("{INNER_ERROR_DUMP}: at Frontdoor.Handlers.Dispatch(Request r) in handler.cs:line 412"),
            }),
        );
    }
}

impl Knobs {
    /// The LRO form of `operation`: `Location` only where its specification allows 202.
    pub fn lro_form(&self, operation: &str) -> LroForm {
        match self.lro_forms.get(operation).copied().unwrap_or_default() {
            LroForm::Location if allows_accepted(operation) => LroForm::Location,
            _ => LroForm::AzureAsyncOperation,
        }
    }

    /// Refuse forms the emulator would not answer: an operation it does not serve as a
    /// long-running one, or the `Location` form (202) where the specification allows only
    /// 200/201.
    pub fn check(&self) -> Result<(), String> {
        for (op, form) in &self.lro_forms {
            if !LRO_OPERATIONS.iter().any(|(o, _)| o == op) {
                return Err(format!(
                    "lroForms: {op} is not a long-running operation the emulator serves"
                ));
            }
            if *form == LroForm::Location && !allows_accepted(op) {
                return Err(format!(
                    "lroForms: {op} answers only 200 or 201 in the Compute specification, so never in the Location form (202)"
                ));
            }
        }
        Ok(())
    }

    /// Items per page.
    pub fn page_size(&self) -> usize {
        if self.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            self.page_size
        }
    }
}
