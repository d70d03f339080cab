//! [`RoleApi`] over ARM (`Microsoft.Authorization` role definitions and assignments).

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ArmClient;
use super::transport::{CREATED, Decode, Request, Wire};
use crate::roles::{NewRoleAssignment, RoleAssignment, RoleDefinition};
use crate::scope::ArmScope;
use crate::{ArmError, RoleApi, api_versions};

/// The properties of a role definition as ARM answers it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDefinitionProperties {
    role_name: String,
    #[serde(default)]
    permissions: Option<Vec<WirePermission>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePermission {
    #[serde(default)]
    data_actions: Option<Vec<String>>,
}

fn parse_definition(v: Value) -> Result<RoleDefinition, serde_json::Error> {
    let w: Wire<WireDefinitionProperties> = serde_json::from_value(v)?;
    let permissions = w.properties.permissions.into_iter().flatten();
    Ok(RoleDefinition {
        data_actions: permissions
            .flat_map(|p| p.data_actions.unwrap_or_default())
            .collect(),
        role_name: w.properties.role_name,
        id: w.id,
        name: w.name,
    })
}

/// The properties of a role assignment as ARM answers it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAssignmentProperties {
    scope: String,
    role_definition_id: String,
    principal_id: String,
}

fn parse_assignment(v: Value) -> Result<RoleAssignment, serde_json::Error> {
    let w: Wire<WireAssignmentProperties> = serde_json::from_value(v)?;
    Ok(RoleAssignment {
        id: w.id,
        name: w.name,
        scope: w.properties.scope,
        role_definition_id: w.properties.role_definition_id,
        principal_id: w.properties.principal_id,
    })
}

impl ArmClient {
    /// `{scope}/providers/Microsoft.Authorization/{collection}[/{name}]`, filtered by `filter`.
    /// Only a canonical scope is sent, so the URL names exactly the scope the caller checked (a
    /// `..` segment would be resolved by the URL builder).
    fn authorization_url(
        &self,
        operation: &'static str,
        scope: &str,
        collection: &str,
        name: Option<&str>,
        filter: Option<&str>,
    ) -> Result<Url, ArmError> {
        let scope = ArmScope::parse(scope)
            .map_err(|e| ArmError::local(operation, "InvalidScope", e.to_string()))?;
        let mut path = format!("{scope}/providers/Microsoft.Authorization/{collection}");
        if let Some(name) = name {
            path = format!("{path}/{name}");
        }
        let query: Vec<(&str, &str)> = filter.map(|f| ("$filter", f)).into_iter().collect();
        Ok(self.url(&path, api_versions::AUTHORIZATION, &query))
    }

    /// Read the `kind` resource `name` at `scope` (None when it does not exist).
    async fn get_authorization<T>(
        &self,
        op: &'static str,
        scope: &str,
        kind: &str,
        name: &str,
        parse: Decode<T>,
    ) -> Result<Option<T>, ArmError> {
        let url = self.authorization_url(op, scope, kind, Some(name), None)?;
        self.read(Request::get(op, url), parse).await
    }

    /// Every `kind` resource at `scope` that `filter` selects, following the pages.
    async fn list_authorization<T>(
        &self,
        op: &'static str,
        scope: &str,
        kind: &str,
        filter: Option<&str>,
        parse: Decode<T>,
    ) -> Result<Vec<T>, ArmError> {
        let url = self.authorization_url(op, scope, kind, None, filter)?;
        self.list_all(op, url, parse).await
    }
}

/// ARM's operation that lists role assignments, with or without a filter.
const LIST_ASSIGNMENTS: &str = "RoleAssignments_ListForScope";

#[async_trait]
impl RoleApi for ArmClient {
    async fn get_role_definition(
        &self,
        scope: &str,
        guid: &str,
    ) -> Result<Option<RoleDefinition>, ArmError> {
        self.get_authorization(
            "RoleDefinitions_Get",
            scope,
            "roleDefinitions",
            guid,
            parse_definition,
        )
        .await
    }

    async fn find_role_definition(
        &self,
        scope: &str,
        role_name: &str,
    ) -> Result<Option<RoleDefinition>, ArmError> {
        const OP: &str = "RoleDefinitions_List";
        let filter = format!("roleName eq '{}'", role_name.replace('\'', "''"));
        let mut matching = self
            .list_authorization(
                OP,
                scope,
                "roleDefinitions",
                Some(&filter),
                parse_definition,
            )
            .await?;
        matching.retain(|d| d.role_name.eq_ignore_ascii_case(role_name));
        match matching.len() {
            0 | 1 => Ok(matching.pop()),
            n => Err(ArmError::local(
                OP,
                "AmbiguousRoleName",
                format!("{n} role definitions are named {role_name}; use the role definition id"),
            )),
        }
    }

    async fn get_role_assignment(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<RoleAssignment>, ArmError> {
        self.get_authorization(
            "RoleAssignments_Get",
            scope,
            "roleAssignments",
            name,
            parse_assignment,
        )
        .await
    }

    async fn create_role_assignment(
        &self,
        new: NewRoleAssignment<'_>,
    ) -> Result<RoleAssignment, ArmError> {
        const OP: &str = "RoleAssignments_Create";
        let name = Some(new.name);
        let url = self.authorization_url(OP, new.scope, "roleAssignments", name, None)?;
        let body = json!({"properties": {
            "roleDefinitionId": new.role_definition_id,
            "principalId": new.principal_id,
            "principalType": "ServicePrincipal",
            "description": "managed by uami-controller",
        }});
        let req = Request::new(OP, Method::PUT, url).json(&body);
        self.write(req, CREATED, parse_assignment).await
    }

    async fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<(), ArmError> {
        const OP: &str = "RoleAssignments_Delete";
        let url = self.authorization_url(OP, scope, "roleAssignments", Some(name), None)?;
        self.delete(OP, url).await
    }

    async fn list_role_assignments_for_principal(
        &self,
        scope: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, ArmError> {
        let filter = format!("principalId eq '{principal_id}'");
        self.list_authorization(
            LIST_ASSIGNMENTS,
            scope,
            "roleAssignments",
            Some(&filter),
            parse_assignment,
        )
        .await
    }

    async fn list_role_assignments(&self, scope: &str) -> Result<Vec<RoleAssignment>, ArmError> {
        self.list_authorization(
            LIST_ASSIGNMENTS,
            scope,
            "roleAssignments",
            None,
            parse_assignment,
        )
        .await
    }
}
