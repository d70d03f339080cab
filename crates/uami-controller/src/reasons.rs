//! Condition reasons and Event reasons: the names the controller uses for the variants of
//! [`Reason`] (in `api`, since the agent gives them too). Each is a static CamelCase string:
//! they are part of the API that dashboards and alerts match on.

use uami_api::conditions::Reason;

/// The object is reconciled and, where asked, verified.
pub const READY: &str = Reason::Ready.as_str();
/// The identity was created by this controller.
pub const CREATED: &str = Reason::Created.as_str();
/// An existing identity or role assignment was taken over.
pub const ADOPTED: &str = Reason::Adopted.as_str();
/// An identity with this name exists in Azure and belongs to someone else.
pub const ALREADY_EXISTS: &str = Reason::AlreadyExists.as_str();
/// No subscription in the spec and no default configured.
pub const NO_SUBSCRIPTION: &str = Reason::NoSubscription.as_str();
/// The referenced `UserAssignedIdentity` does not exist.
pub const IDENTITY_NOT_FOUND: &str = Reason::IdentityNotFound.as_str();
/// The referenced identity exists but is not ready yet (no principal or client id).
pub const WAITING_FOR_IDENTITY: &str = Reason::WaitingForIdentity.as_str();
/// No GrantPolicy allows the request.
pub const DENIED_BY_POLICY: &str = Reason::DeniedByPolicy.as_str();
/// The role name or id does not resolve to a role definition.
pub const ROLE_NOT_FOUND: &str = Reason::RoleNotFound.as_str();
/// Entra has not replicated the new principal yet; retried with a bound.
pub const PRINCIPAL_NOT_FOUND: &str = Reason::PrincipalNotFound.as_str();
/// The role assignment exists.
pub const GRANTED: &str = Reason::Granted.as_str();
/// The identity is assigned to the VM or scale set.
pub const ASSIGNED: &str = Reason::Assigned.as_str();
/// A change to the VM or scale set is being written or its operation polled.
pub const ASSIGNING: &str = Reason::Assigning.as_str();
/// The VM or scale set does not exist.
pub const TARGET_NOT_FOUND: &str = Reason::TargetNotFound.as_str();
/// Waiting for the agent on the VM to report a token.
pub const AWAITING_TOKEN: &str = Reason::AwaitingToken.as_str();
/// Waiting for the agent on the VM to report the access check.
pub const AWAITING_ACCESS_CHECK: &str = Reason::AwaitingAccessCheck.as_str();
/// The access check cannot read a scope of this resource type.
pub const UNSUPPORTED_SCOPE: &str = Reason::UnsupportedScope.as_str();
/// The agent reported a failure (its own condition carries the detail).
pub const AGENT_REPORTED_FAILURE: &str = Reason::AgentReportedFailure.as_str();
/// Deletion waits for bindings and grants that use this identity.
pub const WAITING_FOR_DEPENDENTS: &str = Reason::WaitingForDependents.as_str();
/// Azure throttled the request; retried after `Retry-After`.
pub const THROTTLED: &str = Reason::Throttled.as_str();
/// The controller lacks an Azure permission.
pub const FORBIDDEN: &str = Reason::Forbidden.as_str();
/// A Kubernetes API call failed.
pub const KUBERNETES_ERROR: &str = Reason::KubernetesError.as_str();
/// The location in Azure differs from the spec (location is immutable in Azure).
pub const LOCATION_MISMATCH: &str = Reason::LocationMismatch.as_str();
/// The scope is not a canonical ARM scope; nothing is sent to ARM.
pub const INVALID_SCOPE: &str = Reason::InvalidScope.as_str();
/// The ConfigMap named in `exportTo` exists and was not created for this identity.
pub const CONFIG_MAP_CONFLICT: &str = Reason::ConfigMapConflict.as_str();
/// The controller runs without `--oidc-issuer`, so service account bindings cannot be made.
pub const NO_OIDC_ISSUER: &str = Reason::NoOidcIssuer.as_str();
/// The bound service account does not exist.
pub const SERVICE_ACCOUNT_NOT_FOUND: &str = Reason::ServiceAccountNotFound.as_str();
/// Several bindings of one service account say `default: true`: none of them names the
/// account's client id, which is left as it was.
pub const DEFAULT_CONFLICT: &str = Reason::DefaultConflict.as_str();
/// The identity's principal changed under the same ARM id: it was deleted and created again.
pub const IDENTITY_RECREATED: &str = Reason::IdentityRecreated.as_str();
/// The identity has Azure's maximum of federated identity credentials.
pub const FEDERATED_CREDENTIAL_LIMIT: &str = Reason::FederatedCredentialLimit.as_str();
/// The subscription has Azure's maximum of role assignments; the grant's assignment was not
/// asked for.
pub const ROLE_ASSIGNMENT_LIMIT: &str = Reason::RoleAssignmentLimit.as_str();
/// The grant's assignment took its subscription to 90% or more of Azure's role assignment limit.
pub const ROLE_ASSIGNMENTS_NEAR_LIMIT: &str = Reason::RoleAssignmentsNearLimit.as_str();
/// The binding's credential took its identity to 90% or more of Azure's federated identity
/// credential limit.
pub const FEDERATED_CREDENTIALS_NEAR_LIMIT: &str = Reason::FederatedCredentialsNearLimit.as_str();
/// A token of the service account was exchanged for a token of the identity.
pub const TOKEN_ACQUIRED: &str = Reason::TokenAcquired.as_str();
/// The TokenRequest for the service account failed.
pub const TOKEN_REQUEST_FAILED: &str = Reason::TokenRequestFailed.as_str();
/// The exchange at Entra ID failed without an AADSTS code.
pub const TOKEN_EXCHANGE_FAILED: &str = Reason::TokenExchangeFailed.as_str();
/// The object was accepted by the API server but cannot be read by the controller (a value its
/// schema allows and its type does not); it is left out until it is fixed.
pub const INVALID_OBJECT: &str = Reason::InvalidObject.as_str();
/// IMDS on the VM does not know the identity (agent): it is not assigned, or not yet.
pub const IDENTITY_NOT_ASSIGNED: &str = Reason::IdentityNotAssigned.as_str();
/// IMDS did not answer (agent); the last result stays.
pub const IMDS_UNAVAILABLE: &str = Reason::ImdsUnavailable.as_str();
/// IMDS throttled the agent; the last result stays.
pub const IMDS_THROTTLED: &str = Reason::ImdsThrottled.as_str();
/// An access check could not be made (agent, token check).
pub const CHECK_FAILED: &str = Reason::CheckFailed.as_str();
/// Every granted scope was read with the identity's token.
pub const ACCESS_VERIFIED: &str = Reason::AccessVerified.as_str();
/// A granted scope refused the identity's token.
pub const ACCESS_DENIED: &str = Reason::AccessDenied.as_str();
/// A granted scope answered with a status that is neither allowed nor denied.
pub const UNEXPECTED_STATUS: &str = Reason::UnexpectedStatus.as_str();
/// Azure failed without an error code.
pub const AZURE_ERROR: &str = Reason::AzureError.as_str();
/// Something the controller made was changed or removed outside it; it is made again.
pub const DRIFT_DETECTED: &str = Reason::DriftDetected.as_str();
/// What a binding or grant gave was taken back.
pub const REVOKED: &str = Reason::Revoked.as_str();
/// Writing the identity to the VM or scale set failed.
pub const ASSIGN_FAILED: &str = Reason::AssignFailed.as_str();
/// The identity was deleted in Azure.
pub const DELETED: &str = Reason::Deleted.as_str();
