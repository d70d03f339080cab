//! What to write about an identity in Azure (pure): create it, update its tags, adopt it, leave
//! it, or refuse to touch it.

use std::collections::BTreeMap;

use super::super::reasons;
use uami_api::UserAssignedIdentitySpec;
use uami_azure::identity::Identity;

/// Tag naming the Kubernetes object that owns an identity.
pub const OWNER_TAG: &str = "uami.dev-owner";
/// Tag marking an identity that was adopted, never to be deleted by the controller.
pub const ADOPTED_TAG: &str = "uami.dev-adopted";
/// Tag naming the uid of the object that owns an identity: an object of the same cluster,
/// namespace and name created later (after its predecessor left the identity behind with
/// `deletionPolicy: Orphan`, its namespace perhaps given to another team) is another owner.
pub const OWNER_UID_TAG: &str = "uami.dev-owner-uid";

/// Whether `tags` name the owner `owner` with uid `uid` (an identity tagged before owner uids
/// were recorded names no uid, and is taken as its owner's; the uid tag is then added).
pub fn owned(tags: &BTreeMap<String, String>, owner: &str, uid: &str) -> bool {
    tags.get(OWNER_TAG).map(String::as_str) == Some(owner)
        && tags.get(OWNER_UID_TAG).is_none_or(|u| u == uid)
}

/// What to do about the identity in Azure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create it with these tags.
    Create { tags: BTreeMap<String, String> },
    /// It is ours (or being adopted) and its tags differ: write these.
    UpdateTags {
        tags: BTreeMap<String, String>,
        adopting: bool,
    },
    /// Nothing to write.
    InSync,
    /// Do not touch it: `reason` and `message` for the Ready condition.
    Refuse {
        reason: &'static str,
        message: String,
    },
}

/// The owner tag value of an object of cluster `cluster`.
pub fn owner_value(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{cluster}/{namespace}/{name}")
}

fn normalise_location(l: &str) -> String {
    l.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
}

/// Decide what to write (pure). `may_adopt` says whether a GrantPolicy allows this object to
/// adopt an identity that exists without an owner (`Err` carries the denial).
pub fn plan(
    spec: &UserAssignedIdentitySpec,
    owner: &str,
    uid: &str,
    current: Option<&Identity>,
    may_adopt: Result<(), String>,
) -> Plan {
    let mut desired = spec.tags.clone();
    desired.insert(OWNER_TAG.to_string(), owner.to_string());
    desired.insert(OWNER_UID_TAG.to_string(), uid.to_string());
    let Some(current) = current else {
        return Plan::Create { tags: desired };
    };
    // Taking over an identity this object did not create is adoption: it needs adoptExisting
    // and a GrantPolicy's identityAdoption.
    let adopt = |not_ours: String| -> Result<bool, Plan> {
        if !spec.adopt_existing {
            return Err(Plan::Refuse {
                reason: reasons::ALREADY_EXISTS,
                message: format!(
                    "{not_ours}; set spec.adoptExisting: true (and allow it in a GrantPolicy's identityAdoption) to take it over"
                ),
            });
        }
        match may_adopt {
            Ok(()) => Ok(true),
            Err(message) => Err(Plan::Refuse {
                reason: reasons::DENIED_BY_POLICY,
                message,
            }),
        }
    };
    let current_owner = current.tags.get(OWNER_TAG).map(String::as_str);
    let decided = match current_owner {
        Some(_) if owned(&current.tags, owner, uid) => Ok(false),
        Some(o) if o == owner => adopt(format!(
            "the identity exists in Azure and was created for an earlier object named {owner} (uid {})",
            current
                .tags
                .get(OWNER_UID_TAG)
                .map(String::as_str)
                .unwrap_or_default()
        )),
        Some(other) => Err(Plan::Refuse {
            reason: reasons::ALREADY_EXISTS,
            message: format!("the identity exists in Azure and is managed by {other}"),
        }),
        None => adopt("the identity exists in Azure and was not created by this object".into()),
    };
    let adopting = match decided {
        Ok(adopting) => adopting,
        Err(refusal) => return refusal,
    };
    if normalise_location(&current.location) != normalise_location(&spec.location) {
        return Plan::Refuse {
            reason: reasons::LOCATION_MISMATCH,
            message: format!(
                "the identity is in {} but spec.location is {}",
                current.location, spec.location
            ),
        };
    }
    if adopting || current.tags.contains_key(ADOPTED_TAG) {
        // An adopted identity keeps the tags it had; the spec's tags are added to them.
        let mut merged = current.tags.clone();
        merged.extend(desired);
        merged.insert(ADOPTED_TAG.to_string(), "true".to_string());
        desired = merged;
    }
    if adopting || current.tags != desired {
        Plan::UpdateTags {
            tags: desired,
            adopting,
        }
    } else {
        Plan::InSync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(adopt: bool) -> UserAssignedIdentitySpec {
        serde_json::from_value(serde_json::json!({
            "resourceGroup": "DevTest", "location": "eastus", "adoptExisting": adopt, "tags": {"team": "a"}
        }))
        .unwrap()
    }

    fn azure(tags: &[(&str, &str)], location: &str) -> Identity {
        Identity {
            location: location.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plans() {
        const UID: &str = "u1";
        let owner = "c1/ns/id";
        assert!(
            matches!(plan(&spec(false), owner, UID, None, Ok(())), Plan::Create { tags } if tags[OWNER_TAG] == owner && tags["team"] == "a")
        );
        let ours = azure(
            &[(OWNER_TAG, owner), (OWNER_UID_TAG, UID), ("team", "a")],
            "East US",
        );
        assert_eq!(
            plan(&spec(false), owner, UID, Some(&ours), Ok(())),
            Plan::InSync
        );
        // Tagged before owner uids were recorded: ours, and the uid is added.
        let unrecorded = azure(&[(OWNER_TAG, owner), ("team", "a")], "eastus");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&unrecorded), Ok(())), Plan::UpdateTags { adopting: false, tags } if tags[OWNER_UID_TAG] == UID)
        );
        // Created for an earlier object of the same name (orphaned, then the name reused): not
        // ours; taking it over is adoption.
        let earlier = azure(
            &[(OWNER_TAG, owner), (OWNER_UID_TAG, "u0"), ("team", "a")],
            "eastus",
        );
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&earlier), Ok(())), Plan::Refuse { reason, message } if reason == reasons::ALREADY_EXISTS && message.contains("earlier object"))
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&earlier), Err("no".into())), Plan::Refuse { reason, .. } if reason == reasons::DENIED_BY_POLICY)
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&earlier), Ok(())), Plan::UpdateTags { adopting: true, tags } if tags[OWNER_UID_TAG] == UID && tags[ADOPTED_TAG] == "true")
        );
        let drifted = azure(&[(OWNER_TAG, owner), ("team", "b")], "eastus");
        assert!(matches!(
            plan(&spec(false), owner, UID, Some(&drifted), Ok(())),
            Plan::UpdateTags {
                adopting: false,
                ..
            }
        ));
        let foreign = azure(&[("team", "a")], "eastus");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&foreign), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::ALREADY_EXISTS)
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&foreign), Ok(())), Plan::UpdateTags { adopting: true, tags } if tags[ADOPTED_TAG] == "true")
        );
        let other_owner = azure(&[(OWNER_TAG, "other/x")], "eastus");
        assert!(matches!(
            plan(&spec(true), owner, UID, Some(&other_owner), Ok(())),
            Plan::Refuse { .. }
        ));
        let elsewhere = azure(&[(OWNER_TAG, owner), ("team", "a")], "westeurope");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&elsewhere), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::LOCATION_MISMATCH)
        );
        let adopted = azure(
            &[
                (OWNER_TAG, owner),
                (OWNER_UID_TAG, UID),
                ("team", "a"),
                (ADOPTED_TAG, "true"),
            ],
            "eastus",
        );
        assert_eq!(
            plan(&spec(true), owner, UID, Some(&adopted), Ok(())),
            Plan::InSync
        );
        // Adoption needs a policy, keeps the identity's tags, and never takes another
        // cluster's identity with the same namespace and name.
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&foreign), Err("no".into())), Plan::Refuse { reason, .. } if reason == reasons::DENIED_BY_POLICY)
        );
        let tagged = azure(&[("cost-center", "42")], "eastus");
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&tagged), Ok(())), Plan::UpdateTags { tags, .. } if tags["cost-center"] == "42" && tags["team"] == "a")
        );
        let other_cluster = azure(&[(OWNER_TAG, "c2/ns/id")], "eastus");
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&other_cluster), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::ALREADY_EXISTS)
        );
    }
}
