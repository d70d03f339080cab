//! Which binding of a service account names its identity in the service account's client id
//! annotation (the default), and waking the others when that changes.

use std::sync::Arc;

use kube::{Resource, ResourceExt};

use super::super::context::{Context, live_in};
use super::state::DefaultChoice;
use uami_api::IdentityBinding;

/// The binding whose identity `obj`'s service account `sa` in `ns` should name, when it is
/// another binding's (`Ok(None)`: this binding annotates); `Err` with the message when
/// bindings, `obj` among them, set different identities as the default. Wakes the other
/// bindings when the default changed.
pub(super) fn default_binding(
    ctx: &Context,
    obj: &IdentityBinding,
    ns: &str,
    sa: &str,
) -> Result<Option<String>, String> {
    let choice = default_of(ctx, ns, sa);
    wake_on_new_choice(ctx, ns, sa, &choice, obj);
    let identity_name = &obj.spec.identity_ref.name;
    match &choice {
        Some(DefaultChoice::Conflict(marked)) if marked.iter().any(|b| b.0 == obj.name_any()) => {
            Err(format!(
                "IdentityBindings {} of service account {sa} all say default: true for different identities; the service account's client id annotation is left as it was until one of them says false",
                marked
                    .iter()
                    .map(|b| b.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        Some(DefaultChoice::Default(name, identity)) if *identity != *identity_name => {
            Ok(Some(name.clone()))
        }
        // This binding's identity is the default (or, in a conflict it is not part of, the
        // annotation is nobody's to change).
        Some(DefaultChoice::Default(..)) | None => Ok(None),
        Some(DefaultChoice::Conflict(_)) => Ok(Some(String::new())),
    }
}

/// The live bindings of service account `sa` in `ns`, oldest first.
fn bindings_of(ctx: &Context, ns: &str, sa: &str) -> Vec<Arc<IdentityBinding>> {
    let mut found = live_in(&ctx.stores.bindings, ns, |b| {
        b.spec
            .target
            .service_account
            .as_ref()
            .is_some_and(|s| s.name == sa)
    });
    found.sort_by_key(|b| (b.meta().creation_timestamp.clone(), b.name_any()));
    found
}

/// The default of service account `sa` in `ns` (see [`choose_default`]); `None` without a
/// live binding.
pub(super) fn default_of(ctx: &Context, ns: &str, sa: &str) -> Option<DefaultChoice> {
    let bindings: Vec<(String, String, bool)> = bindings_of(ctx, ns, sa)
        .iter()
        .map(|b| {
            let marked = b
                .spec
                .target
                .service_account
                .as_ref()
                .is_some_and(|s| s.default);
            (b.name_any(), b.spec.identity_ref.name.clone(), marked)
        })
        .collect();
    choose_default(&bindings)
}

/// Pure: from the bindings of one service account, oldest first (name, identity, marked
/// `default`), the default. The marked one wins; several marked for one identity agree; marked
/// for different identities conflict; none marked, the oldest is the default (so a second
/// binding never moves the annotation of the first).
fn choose_default(bindings: &[(String, String, bool)]) -> Option<DefaultChoice> {
    let marked: Vec<&(String, String, bool)> = bindings.iter().filter(|b| b.2).collect();
    let first = marked.first().copied().or(bindings.first())?;
    if marked.iter().any(|b| b.1 != first.1) {
        return Some(DefaultChoice::Conflict(
            marked.iter().map(|b| (b.0.clone(), b.1.clone())).collect(),
        ));
    }
    Some(DefaultChoice::Default(first.0.clone(), first.1.clone()))
}

/// When the default of a service account changes (a binding marked, unmarked, added or
/// deleted), its other bindings are reconciled: the new default annotates, a conflict is shown
/// on each binding in it. Decided once per change, so the bindings do not wake each other in turn.
pub(super) fn wake_on_new_choice(
    ctx: &Context,
    ns: &str,
    sa: &str,
    choice: &Option<DefaultChoice>,
    obj: &IdentityBinding,
) {
    if !ctx.sa_defaults.changed(ns, sa, choice) {
        return;
    }
    for b in bindings_of(ctx, ns, sa) {
        if b.uid() != obj.uid() {
            ctx.writer
                .wake(kube::runtime::reflector::ObjectRef::from_obj(&*b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, identity: &str, marked: bool) -> (String, String, bool) {
        (name.into(), identity.into(), marked)
    }

    #[test]
    fn the_default_is_the_marked_binding_else_the_oldest() {
        assert_eq!(choose_default(&[]), None);
        let one = [b("a", "x", false)];
        assert_eq!(
            choose_default(&one),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let two = [b("a", "x", false), b("b", "y", false)];
        assert_eq!(
            choose_default(&two),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let marked = [b("a", "x", false), b("b", "y", true)];
        assert_eq!(
            choose_default(&marked),
            Some(DefaultChoice::Default("b".into(), "y".into()))
        );
        let same = [b("a", "x", true), b("b", "x", true), b("c", "y", false)];
        assert_eq!(
            choose_default(&same),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let conflict = [b("a", "x", true), b("b", "y", true), b("c", "z", false)];
        assert_eq!(
            choose_default(&conflict),
            Some(DefaultChoice::Conflict(vec![
                ("a".into(), "x".into()),
                ("b".into(), "y".into())
            ]))
        );
    }
}
