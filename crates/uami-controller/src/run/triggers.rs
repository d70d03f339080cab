//! What wakes whom: the mappers from a changed object to the objects of another kind that
//! depend on it.

use kube::runtime::reflector::{self, ObjectRef};
use kube::{Resource, ResourceExt};

use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};

/// The bindings of `grant`'s identity.
pub(super) fn bindings_of_grant(
    bindings: &reflector::Store<IdentityBinding>,
    grant: &RoleGrant,
) -> Vec<ObjectRef<IdentityBinding>> {
    let ns = grant.namespace();
    bindings
        .state()
        .iter()
        .filter(|b| b.namespace() == ns && b.spec.identity_ref.name == grant.spec.identity_ref.name)
        .map(|b| ObjectRef::from_obj(&**b))
        .collect()
}

/// The identity `name` in `obj`'s namespace, when it is being deleted (so waits for `obj`).
pub(super) fn deleting_identity<K: Resource>(
    identities: &reflector::Store<UserAssignedIdentity>,
    obj: &K,
    name: &str,
) -> Option<ObjectRef<UserAssignedIdentity>> {
    let at = ObjectRef::new(name).within(&obj.namespace()?);
    identities
        .get(&at)
        .filter(|i| i.meta().deletion_timestamp.is_some())
        .map(|_| at)
}

/// The objects of kind `K` whose identity is `identity`.
pub(super) fn dependents<K>(
    store: &reflector::Store<K>,
    identity: &UserAssignedIdentity,
    identity_ref: impl Fn(&K) -> &String,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = identity.namespace();
    let name = identity.name_any();
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && *identity_ref(o) == name)
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}
