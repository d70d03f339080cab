//! TokenRequest: the audience defaults to the issuer, the lifetime to an hour and may not be under
//! ten minutes; a token bound to a Pod carries the pod and its node; a bound object that is missing
//! or another one is refused.

use serde_json::json;

use crate::harness::*;

const SA: &str = "/api/v1/namespaces/{ns}/serviceaccounts";
const TOKEN: &str = "/api/v1/namespaces/{ns}/serviceaccounts/app/token";

fn request(spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

fn token_request() -> Case {
    let pod_ref = |name: &str, uid: &str| json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}});
    Case::new(
        "TokenRequest: audience and lifetime defaults, minimum lifetime, bound to a Pod",
        vec![
            post(SA, json!({"metadata": {"name": "app"}}))
                .what("a ServiceAccount")
                .expect(201)
                .save("sauid", "/metadata/uid"),
            post(TOKEN, request(json!({})))
                .what("defaults: the issuer as audience, one hour")
                .expect(201)
                .fields(&[
                    "/kind",
                    "/apiVersion",
                    "/spec/expirationSeconds",
                    "/metadata/name",
                    "/metadata/namespace",
                ])
                .cmp(Cmp::EqualsVar("/spec/audiences", "issuer"))
                .cmp(Cmp::ClaimEqualsVar("/aud", "issuer"))
                .cmp(Cmp::Claim("/sub"))
                .cmp(Cmp::Claim("/kubernetes.io/namespace"))
                .cmp(Cmp::Claim("/kubernetes.io/serviceaccount/name"))
                .cmp(Cmp::Claim("/kubernetes.io/pod"))
                .cmp(Cmp::TokenLifetime),
            post(
                TOKEN,
                request(
                    json!({"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 600}),
                ),
            )
            .what("an audience and the shortest lifetime")
            .expect(201)
            .fields(&["/spec/audiences", "/spec/expirationSeconds"])
            .cmp(Cmp::Claim("/aud"))
            .cmp(Cmp::TokenLifetime),
            post(TOKEN, request(json!({"expirationSeconds": 599})))
                .what("under ten minutes is refused")
                .expect(422)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            post(
                "/api/v1/namespaces/{ns}/serviceaccounts/missing/token",
                request(json!({})),
            )
            .what("the token of a missing ServiceAccount")
            .expect(404)
            .cmp(Cmp::Message),
            post("/api/v1/nodes", json!({"metadata": {"name": "{ns}-node"}}))
                .what("a Node")
                .expect(201),
            post(
                "/api/v1/namespaces/{ns}/pods",
                json!({"metadata": {"name": "agent"},
                       "spec": {"nodeName": "{ns}-node", "serviceAccountName": "app",
                                "containers": [{"name": "agent", "image": "uami-controller"}]}}),
            )
            .what("a Pod of the ServiceAccount on that Node")
            .expect(201)
            .fields(&["/spec/nodeName", "/spec/serviceAccountName"])
            .save("poduid", "/metadata/uid"),
            post(TOKEN, request(pod_ref("agent", "{poduid}")))
                .what("a token bound to the Pod carries the pod and its node")
                .expect(201)
                .fields(&["/spec/boundObjectRef/name", "/spec/boundObjectRef/kind"])
                .cmp(Cmp::Claim("/kubernetes.io/pod/name"))
                .cmp(Cmp::Claim("/kubernetes.io/node/name"))
                .cmp(Cmp::TokenLifetime),
            post(TOKEN, request(pod_ref("nopod", "")))
                .what("bound to a missing Pod")
                .expect(404)
                .cmp(Cmp::Message),
            post(TOKEN, request(pod_ref("agent", "0000-wrong")))
                .what("bound to the Pod with another uid")
                .expect(409)
                .cmp(Cmp::Message),
        ],
    )
    .cleanup(vec![delete("/api/v1/nodes/{ns}-node")])
}

pub fn cases() -> Vec<Case> {
    vec![token_request()]
}
