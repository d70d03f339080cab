//! Condition reasons and Event reasons, in one place. Each is a static CamelCase string: they are
//! part of the API that dashboards and alerts match on.

/// The object is reconciled and, where asked, verified.
pub const READY: &str = "Ready";
/// The identity was created by this controller.
pub const CREATED: &str = "Created";
/// An existing identity or role assignment was taken over.
pub const ADOPTED: &str = "Adopted";
/// An identity with this name exists in Azure and belongs to someone else.
pub const ALREADY_EXISTS: &str = "AlreadyExists";
/// No subscription in the spec and no default configured.
pub const NO_SUBSCRIPTION: &str = "NoSubscription";
/// The referenced `UserAssignedIdentity` does not exist.
pub const IDENTITY_NOT_FOUND: &str = "IdentityNotFound";
/// The referenced identity exists but is not ready yet (no principal or client id).
pub const WAITING_FOR_IDENTITY: &str = "WaitingForIdentity";
/// No GrantPolicy allows the request.
pub const DENIED_BY_POLICY: &str = "DeniedByPolicy";
/// The role name or id does not resolve to a role definition.
pub const ROLE_NOT_FOUND: &str = "RoleNotFound";
/// Entra has not replicated the new principal yet; retried with a bound.
pub const PRINCIPAL_NOT_FOUND: &str = "PrincipalNotFound";
/// The role assignment exists.
pub const GRANTED: &str = "Granted";
/// The identity is assigned to the VM or scale set.
pub const ASSIGNED: &str = "Assigned";
/// A change to the VM or scale set is being written or its operation polled.
pub const ASSIGNING: &str = "Assigning";
/// The VM or scale set does not exist.
pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
/// Waiting for the agent on the VM to report a token.
pub const AWAITING_TOKEN: &str = "AwaitingToken";
/// Waiting for the agent on the VM to report the access check.
pub const AWAITING_ACCESS_CHECK: &str = "AwaitingAccessCheck";
/// The access check cannot read a scope of this resource type.
pub const UNSUPPORTED_SCOPE: &str = "UnsupportedScope";
/// The agent reported a failure (its own condition carries the detail).
pub const AGENT_REPORTED_FAILURE: &str = "AgentReportedFailure";
/// Deletion waits for bindings and grants that use this identity.
pub const WAITING_FOR_DEPENDENTS: &str = "WaitingForDependents";
/// Azure throttled the request; retried after `Retry-After`.
pub const THROTTLED: &str = "Throttled";
/// The controller lacks an Azure permission.
pub const FORBIDDEN: &str = "Forbidden";
/// A Kubernetes API call failed.
pub const KUBERNETES_ERROR: &str = "KubernetesError";
/// The location in Azure differs from the spec (location is immutable in Azure).
pub const LOCATION_MISMATCH: &str = "LocationMismatch";
/// The scope is not a canonical ARM scope; nothing is sent to ARM.
pub const INVALID_SCOPE: &str = "InvalidScope";
/// The ConfigMap named in `exportTo` exists and was not created for this identity.
pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
/// The controller runs without `--oidc-issuer`, so service account bindings cannot be made.
pub const NO_OIDC_ISSUER: &str = "NoOidcIssuer";
/// The bound service account does not exist.
pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
/// Several bindings of one service account say `default: true`: none of them names the
/// account's client id, which is left as it was.
pub const DEFAULT_CONFLICT: &str = "DefaultConflict";
/// The identity's principal changed under the same ARM id: it was deleted and created again.
pub const IDENTITY_RECREATED: &str = "IdentityRecreated";
/// The identity has Azure's maximum of federated identity credentials.
pub const FEDERATED_CREDENTIAL_LIMIT: &str = "FederatedCredentialLimitReached";
/// The subscription has Azure's maximum of role assignments; the grant's assignment was not
/// asked for.
pub const ROLE_ASSIGNMENT_LIMIT: &str = "RoleAssignmentLimitReached";
/// The grant's assignment took its subscription to 90% or more of Azure's role assignment limit.
pub const ROLE_ASSIGNMENTS_NEAR_LIMIT: &str = "RoleAssignmentsNearLimit";
/// The binding's credential took its identity to 90% or more of Azure's federated identity
/// credential limit.
pub const FEDERATED_CREDENTIALS_NEAR_LIMIT: &str = "FederatedCredentialsNearLimit";
/// A token of the service account was exchanged for a token of the identity.
pub const TOKEN_ACQUIRED: &str = "TokenAcquired";
/// The TokenRequest for the service account failed.
pub const TOKEN_REQUEST_FAILED: &str = "TokenRequestFailed";
/// The exchange at Entra ID failed without an AADSTS code.
pub const TOKEN_EXCHANGE_FAILED: &str = "TokenExchangeFailed";
