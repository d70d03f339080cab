//! Events as the tests look for them.

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use uami::demo::stack::Stack;

use super::{TUTORIAL, eventually};

/// The first Event of the tutorial's namespace with `reason` about object `name` (30 s at most).
pub async fn event_about(stack: &Stack, reason: &str, name: &str) -> Event {
    let events: Api<Event> = Api::namespaced(stack.client(), TUTORIAL);
    eventually(30, &format!("an Event {reason} about {name}"), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
    })
    .await
}
