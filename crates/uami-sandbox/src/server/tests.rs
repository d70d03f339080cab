//! Request options through HTTP: `fieldValidation=Strict`, `dryRun=All`, and the `Warning`
//! headers of a `Warn` admission policy, each for the request that asks and no other; the watch
//! events counted per user and object.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::SandboxOptions;

fn crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.dev"},
           "spec": {"group": "example.dev", "scope": "Namespaced",
                    "names": {"plural": "widgets", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                      "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}})
}

fn widget(name: &str) -> Value {
    json!({"apiVersion": "example.dev/v1", "kind": "Widget",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"size": 1}})
}

/// A widget with a field its schema does not declare.
fn coloured_widget(name: &str) -> Value {
    let mut w = widget(name);
    w["spec"]["colour"] = json!("red");
    w
}

#[tokio::test]
async fn strict_validation_dry_run_and_warnings_apply_to_their_own_request() {
    let sb = crate::start(SandboxOptions::default()).await.unwrap();
    sb.install(vec![
        crd(),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "small"},
               "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": ["example.dev"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["widgets"]}]},
                        "validations": [{"expression": "request.dryRun || object.metadata.name != 'big'", "message": "big widgets are frowned upon"}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "small"}, "spec": {"policyName": "small", "validationActions": ["Warn"]}}),
    ])
    .unwrap();
    let http = reqwest::Client::new();
    let collection = format!("{}apis/example.dev/v1/namespaces/default/widgets", sb.url());
    let token = sb.token("alice");
    let post = |query: &str, body: Value| {
        http.post(format!("{collection}{query}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    // Strict: the unknown field is refused, and nothing is stored.
    let resp = post("?fieldValidation=Strict", coloured_widget("a"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.colour\""
    );
    // Without it the field is pruned with a warning (the default, Warn); the next request is
    // not strict, nor is the library API.
    let resp = post("", coloured_widget("a")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warnings = warning_headers(&resp);
    assert_eq!(warnings, ["299 - \"unknown field \\\"spec.colour\\\"\""]);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["spec"], json!({"size": 1}));
    sb.install(vec![coloured_widget("b")]).unwrap();

    // A dry run is admitted and answered but not stored; the policy sees `request.dryRun`.
    let resp = post("?dryRun=All", widget("big")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("warning").is_none());
    let get = http
        .get(format!("{collection}/big"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::NOT_FOUND);

    // A Warn policy that fails adds a Warning header to that response only.
    let resp = post("", widget("big")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warnings = warning_headers(&resp);
    assert_eq!(
        warnings,
        [
            "299 - \"Validation failed for ValidatingAdmissionPolicy 'small' with binding 'small': big widgets are frowned upon\""
        ]
    );
    let resp = post("", widget("c")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("warning").is_none());
    sb.shutdown().await;
}

#[tokio::test]
async fn later_pages_of_a_list_show_the_collection_as_of_the_first_page() {
    let sb = crate::start(SandboxOptions::default()).await.unwrap();
    sb.install(vec![crd()]).unwrap();
    let http = reqwest::Client::new();
    let collection = format!("{}apis/example.dev/v1/namespaces/default/widgets", sb.url());
    let token = sb.token("alice");
    for name in ["a", "b", "c", "d"] {
        let resp = http
            .post(&collection)
            .bearer_auth(&token)
            .json(&json!({"apiVersion": "example.dev/v1", "kind": "Widget",
                          "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let get = |query: String| {
        http.get(format!("{collection}{query}"))
            .bearer_auth(&token)
            .send()
    };
    let first: Value = get("?limit=2".into()).await.unwrap().json().await.unwrap();
    let list_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token_next = first["metadata"]["continue"].as_str().unwrap().to_string();

    // Between the pages: "d" changes and "c" goes.
    let changes = [
        http.patch(format!("{collection}/d"))
            .header("Content-Type", "application/merge-patch+json")
            .body(r#"{"spec":{"size":2}}"#),
        http.delete(format!("{collection}/c")),
    ];
    for change in changes {
        let resp = change.bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    let second: Value = get(format!("?limit=2&continue={token_next}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["metadata"]["resourceVersion"], list_rv.as_str());
    let items = second["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["c", "d"],
        "the second page is read at the first page's resourceVersion"
    );
    let rvs: Vec<u64> = items
        .iter()
        .filter_map(|i| i["metadata"]["resourceVersion"].as_str()?.parse().ok())
        .collect();
    assert!(
        rvs.iter().all(|rv| *rv <= list_rv.parse::<u64>().unwrap()),
        "{rvs:?} after {list_rv}"
    );
    assert_eq!(items[1]["spec"]["size"], 1);

    // A new list sees the changes.
    let fresh: Value = get(String::new()).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = fresh["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "d"]);
}

#[tokio::test]
async fn watch_events_are_counted_per_user_and_object() {
    let sb = crate::start(SandboxOptions::default()).await.unwrap();
    let mut labelled = widget("a");
    labelled["metadata"]["labels"] = json!({"team": "blue"});
    sb.install(vec![crd(), labelled, widget("b")]).unwrap();
    let http = reqwest::Client::new();
    let collection = format!("{}apis/example.dev/v1/namespaces/default/widgets", sb.url());
    // Each watch replays what exists, sees one change, and ends after a second.
    let watch = |user: &str, query: &str| {
        http.get(format!(
            "{collection}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true{query}"
        ))
        .bearer_auth(sb.token(user))
        .send()
    };
    let everything = watch("alice", "").await.unwrap();
    let blue = watch("bob", "&labelSelector=team%3Dblue").await.unwrap();
    let resp = http
        .patch(format!("{collection}/a"))
        .bearer_auth(sb.token("admin"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"size":2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let lines = |body: String| body.lines().count();
    assert_eq!(lines(everything.text().await.unwrap()), 3);
    assert_eq!(lines(blue.text().await.unwrap()), 2);

    let d = sb.watch_deliveries();
    let resource = "widgets.example.dev";
    assert_eq!(d.changes.get(resource), Some(&3), "two creates and a patch");
    assert_eq!(d.events_to("alice", resource), 3);
    assert_eq!(d.events_to("bob", resource), 2);
    let bob = d.of(resource).find(|s| s.user == "bob").unwrap();
    assert_eq!(
        bob.objects.iter().collect::<Vec<_>>(),
        [(&"default/a".to_string(), &2)]
    );
    assert_eq!(bob.bookmarks, 0, "no bookmark within a second");
    let over_http: Value = http
        .get(format!("{}_sandbox/watch-deliveries", sb.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, serde_json::to_value(&d).unwrap());
}

/// The `Warning` headers of `resp`.
fn warning_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("warning")
        .iter()
        .map(|h| h.to_str().unwrap().to_string())
        .collect()
}
