//! [`RoleApi`] over ARM (`Microsoft.Authorization` role definitions and assignments).

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};
use url::Url;

use super::ArmClient;
use super::transport::{CREATED, Request, text};
use crate::roles::{NewRoleAssignment, RoleAssignment, RoleDefinition};
use crate::scope::ArmScope;
use crate::{ArmError, RoleApi, api_versions};

fn parse_definition(v: &Value) -> RoleDefinition {
    RoleDefinition {
        id: text(v, "/id"),
        name: text(v, "/name"),
        role_name: text(v, "/properties/roleName"),
        data_actions: v
            .pointer("/properties/permissions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("dataActions").and_then(Value::as_array))
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
    }
}

fn parse_assignment(v: &Value) -> RoleAssignment {
    RoleAssignment {
        id: text(v, "/id"),
        name: text(v, "/name"),
        scope: text(v, "/properties/scope"),
        role_definition_id: text(v, "/properties/roleDefinitionId"),
        principal_id: text(v, "/properties/principalId"),
    }
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
        parse: fn(&Value) -> T,
    ) -> Result<Option<T>, ArmError> {
        let url = self.authorization_url(op, scope, kind, Some(name), None)?;
        self.read(Request::get(op, url), parse).await
    }
}

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
        let url = self.authorization_url(OP, scope, "roleDefinitions", None, Some(&filter))?;
        let mut matching = self.list_all(OP, url, parse_definition).await?;
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
        const OP: &str = "RoleAssignments_ListForScope";
        let filter = format!("principalId eq '{principal_id}'");
        let url = self.authorization_url(OP, scope, "roleAssignments", None, Some(&filter))?;
        self.list_all(OP, url, parse_assignment).await
    }

    async fn list_role_assignments(&self, scope: &str) -> Result<Vec<RoleAssignment>, ArmError> {
        const OP: &str = "RoleAssignments_ListForScope";
        let url = self.authorization_url(OP, scope, "roleAssignments", None, None)?;
        self.list_all(OP, url, parse_assignment).await
    }
}
