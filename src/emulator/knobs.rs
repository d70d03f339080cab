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

/// The knobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Knobs {
    /// LRO form by operation id (`VirtualMachines_Update`, `VirtualMachineScaleSets_Update`);
    /// `AzureAsyncOperation` when absent.
    pub lro_forms: BTreeMap<String, LroForm>,
    /// Items per page of every list (`nextLink` leads to the next); 0 means 100.
    pub page_size: usize,
    /// Base URL written into `nextLink`, `Azure-AsyncOperation` and `Location` instead of the
    /// emulator's own ARM URL (to test that clients refuse links to another origin).
    pub link_base: Option<String>,
}

impl Knobs {
    /// The LRO form of `operation`.
    pub fn lro_form(&self, operation: &str) -> LroForm {
        self.lro_forms.get(operation).copied().unwrap_or_default()
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
