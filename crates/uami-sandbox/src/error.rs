//! The Kubernetes `Status` errors the sandbox answers with, and the common ones built once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::validate;

/// A Kubernetes `Status` error.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 400 for a body that does not parse.
    pub(crate) fn unknown_format(e: impl std::fmt::Display) -> Self {
        Self::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    }

    /// 404 for a path that names no served resource (or a subresource it does not have).
    pub(crate) fn no_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// The `details` that name the object `name` of `def`.
    pub(crate) fn about(mut self, def: &ResourceDef, name: &str) -> Self {
        let mut d = json!({"name": name, "kind": def.plural});
        // The core group is left out, as the API server does.
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        self.details = Some(d);
        self
    }

    /// The error [`about`](Self::about) `name` of `def`, with one cause (arguments in the
    /// order of [`ApiError::invalid_field`]'s).
    pub(crate) fn about_field(
        self,
        def: &ResourceDef,
        name: &str,
        reason: &str,
        field: &str,
        message: &str,
    ) -> Self {
        let mut e = self.about(def, name);
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!([{"reason": reason, "message": message, "field": field}]);
        }
        e
    }

    pub(crate) fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        )
        .about(def, name)
    }

    /// 409 for a write based on an older resourceVersion.
    pub(crate) fn modified(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                def.qualified()
            ),
        )
    }

    /// 422 Invalid with its causes.
    pub(crate) fn invalid(def: &ResourceDef, name: &str, causes: Vec<validate::Cause>) -> Self {
        Self::invalid_kind(&def.kind, &def.group, name, causes)
    }

    /// 422 Invalid with its causes, about the object `name` of `kind` in `group` (the name and
    /// the group are left out of the details when empty).
    pub(crate) fn invalid_kind(
        kind: &str,
        group: &str,
        name: &str,
        causes: Vec<validate::Cause>,
    ) -> Self {
        // The message names each distinct cause once.
        let mut lines: Vec<String> = Vec::new();
        for line in causes.iter().map(|c| c.line()) {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        let joined = if lines.len() == 1 {
            lines[0].clone()
        } else {
            format!("[{}]", lines.join(", "))
        };
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {joined}"),
        );
        let mut details = json!({
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        });
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !kind.is_empty() {
            details["kind"] = json!(kind);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        e.details = Some(details);
        e
    }

    /// 422 Invalid with one cause.
    pub(crate) fn invalid_field(
        def: &ResourceDef,
        name: &str,
        reason: &str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::invalid(
            def,
            name,
            vec![validate::Cause {
                reason: reason.into(),
                field: field.into(),
                message: message.into(),
            }],
        )
    }

    fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "code": self.code,
        });
        if !self.reason.is_empty() {
            v["reason"] = json!(self.reason);
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}
