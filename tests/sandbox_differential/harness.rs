//! The differential harness: one request sent to the real API server and to the sandbox, the two
//! answers compared on what is deterministic (status code, `reason`, the causes' fields and
//! reasons, chosen body fields), and a report that shows both answers when they differ.
//!
//! A case is a list of steps in a namespace of its own (same name on both servers). Paths and
//! bodies may name variables as `{name}`: `{ns}` is the case's namespace, `{issuer}` the
//! server's service-account issuer, and a step may save a field of its answer (each server its
//! own value, such as a resourceVersion or a continue token) for the next steps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::{Value, json};

#[path = "compare.rs"]
mod compare;

use compare::{at, differences, show, warning_text};

/// Who sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// The cluster administrator (`system:masters`).
    Admin,
    /// The static user `legacy-agent`: a service account's name and groups, no extra fields.
    Legacy,
}

/// One HTTP request, with `{var}` placeholders in its path and body.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub content_type: &'static str,
    pub body: Option<String>,
    pub user: User,
}

/// What a server answered.
#[derive(Clone, Debug)]
pub struct Answer {
    pub code: u16,
    /// The body as JSON; a watch's events as an array; `Null` when empty, a string when not JSON.
    pub body: Value,
    /// The `Warning` headers' texts.
    pub warnings: Vec<String>,
}

/// A comparison besides the code, `reason` and causes, which are always compared.
#[derive(Clone, Debug)]
pub enum Cmp {
    /// The value at a JSON pointer (`Null` when absent).
    Field(&'static str),
    /// Whether a JSON pointer is present.
    Present(&'static str),
    /// `/message` exactly.
    Message,
    /// `/message` up to the end of the first occurrence of a text (the rest is a parser's
    /// own words).
    MessageUntil(&'static str),
    /// `/message` from the last occurrence of a text on (what precedes holds uids or times).
    MessageAfter(&'static str),
    /// `/message` with every number replaced (resourceVersions, counts).
    MessageShape(&'static str),
    /// The `Warning` headers.
    Warnings,
    /// The names of the items of a list (`/items/*/metadata/name`), in order.
    ItemNames,
    /// The value at a pointer equals the variable (each server its own value, such as its issuer).
    EqualsVar(&'static str, &'static str),
    /// The claims (the JWT payload) of `/status/token` at a pointer into the claims.
    Claim(&'static str),
    /// A claim of `/status/token` equals the variable (or is a list of just it).
    ClaimEqualsVar(&'static str, &'static str),
    /// `exp - iat` of the token's claims.
    TokenLifetime,
    /// The managed fields: manager, operation, subresource and fields, times left out.
    ManagedFields,
    /// The types, statuses, reasons and messages of `/status/conditions`.
    Conditions,
}

/// A check of one answer, for [`Step::until`].
pub type Ready = fn(&Answer) -> bool;

/// One request to both servers and what must agree.
pub struct Step {
    pub what: String,
    pub req: Req,
    /// The code the real server answers (asserted, so that the table documents it).
    pub expect: Option<u16>,
    pub compare: Vec<Cmp>,
    /// Variables to save from each server's answer: (name, JSON pointer).
    pub save: Vec<(&'static str, &'static str)>,
    /// Repeat the request on each server until its answer passes (at most `secs`), then compare.
    pub until: Option<(Ready, u64)>,
    /// Send, compare nothing (setup whose answer may differ by history, such as a cleanup).
    pub quiet: bool,
    /// A difference that remains: the real server's answer is still asserted; a mismatch is
    /// reported, not failed.
    pub differs: Option<&'static str>,
}

/// A step of each method (as the administrator, comparing code, reason and causes).
pub fn get(path: impl Into<String>) -> Step {
    Step::new("GET", path, None, "application/json")
}

pub fn post(path: impl Into<String>, body: Value) -> Step {
    Step::new("POST", path, Some(body.to_string()), "application/json")
}

pub fn put(path: impl Into<String>, body: Value) -> Step {
    Step::new("PUT", path, Some(body.to_string()), "application/json")
}

pub fn delete(path: impl Into<String>) -> Step {
    Step::new("DELETE", path, None, "application/json")
}

pub fn merge_patch(path: impl Into<String>, body: Value) -> Step {
    Step::new(
        "PATCH",
        path,
        Some(body.to_string()),
        "application/merge-patch+json",
    )
}

pub fn json_patch(path: impl Into<String>, body: Value) -> Step {
    Step::new(
        "PATCH",
        path,
        Some(body.to_string()),
        "application/json-patch+json",
    )
}

/// A server-side apply (`fieldManager` and `force` go in the path's query).
pub fn apply(path: impl Into<String>, body: Value) -> Step {
    Step::new(
        "PATCH",
        path,
        Some(body.to_string()),
        "application/apply-patch+yaml",
    )
}

/// A patch with any content type and a raw body.
pub fn patch_raw(path: impl Into<String>, content_type: &'static str, body: &str) -> Step {
    Step::new("PATCH", path, Some(body.to_string()), content_type)
}

impl Step {
    fn new(
        method: &'static str,
        path: impl Into<String>,
        body: Option<String>,
        content_type: &'static str,
    ) -> Self {
        Self {
            what: String::new(),
            req: Req {
                method,
                path: path.into(),
                content_type,
                body,
                user: User::Admin,
            },
            expect: None,
            compare: Vec::new(),
            save: Vec::new(),
            until: None,
            quiet: false,
            differs: None,
        }
    }

    /// What the step checks.
    pub fn what(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }

    /// The code the real server answers.
    pub fn expect(mut self, code: u16) -> Self {
        self.expect = Some(code);
        self
    }

    pub fn cmp(mut self, c: Cmp) -> Self {
        self.compare.push(c);
        self
    }

    /// Compare the values at these JSON pointers.
    pub fn fields(mut self, pointers: &[&'static str]) -> Self {
        self.compare.extend(pointers.iter().map(|p| Cmp::Field(p)));
        self
    }

    /// The real server answers a Status error with `code`: compare its message.
    pub fn refused(self, code: u16) -> Self {
        self.expect(code).cmp(Cmp::Message)
    }

    /// The real server answers a Status error with `code`: compare its message and details.
    pub fn status_error(self, code: u16) -> Self {
        self.refused(code).fields(&["/details"])
    }

    /// The real server answers `code` with the object: compare the field at `at` and the managed
    /// fields.
    pub fn managed(self, code: u16, at: &'static str) -> Self {
        self.expect(code).fields(&[at]).cmp(Cmp::ManagedFields)
    }

    pub fn save(mut self, var: &'static str, pointer: &'static str) -> Self {
        self.save.push((var, pointer));
        self
    }

    pub fn user(mut self, user: User) -> Self {
        self.req.user = user;
        self
    }

    pub fn until(mut self, ready: Ready, secs: u64) -> Self {
        self.until = Some((ready, secs));
        self
    }

    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    pub fn differs(mut self, why: &'static str) -> Self {
        self.differs = Some(why);
        self
    }
}

/// A named list of steps.
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
    /// Requests sent at the end whatever happened (cluster-scoped objects to remove).
    pub cleanup: Vec<Step>,
    /// Whether the case creates its namespace `{ns}` first (and deletes it at the end).
    pub namespace: bool,
}

impl Case {
    pub fn new(name: impl Into<String>, steps: Vec<Step>) -> Self {
        Self {
            name: name.into(),
            steps,
            cleanup: Vec::new(),
            namespace: true,
        }
    }

    pub fn cleanup(mut self, steps: Vec<Step>) -> Self {
        self.cleanup = steps;
        self
    }

    /// The case makes no namespace of its own.
    pub fn without_namespace(mut self) -> Self {
        self.namespace = false;
        self
    }
}

/// One server: its clients and the variables of the running case.
pub struct Side {
    pub name: &'static str,
    pub admin: kube::Client,
    pub legacy: kube::Client,
    pub vars: BTreeMap<String, String>,
}

/// `text` with every `{var}` replaced by its value.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A JSON string's contents as it goes into a JSON body (quotes and backslashes escaped).
fn json_escaped(v: &str) -> String {
    let s = Value::String(v.to_string()).to_string();
    s[1..s.len() - 1].to_string()
}

impl Side {
    /// The request with this server's variables filled in.
    fn render(&self, req: &Req) -> (String, Option<String>) {
        let escaped: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), json_escaped(v)))
            .collect();
        let path_vars: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let enc: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                (k.clone(), enc)
            })
            .collect();
        (
            substitute(&req.path, &path_vars),
            req.body.as_deref().map(|b| substitute(b, &escaped)),
        )
    }

    /// Send `req` and read the whole answer (a watch is sent with `timeoutSeconds`, so the
    /// server ends it; 30 s at most).
    pub async fn send(&self, req: &Req) -> Answer {
        let (path, body) = self.render(req);
        let client = match req.user {
            User::Admin => &self.admin,
            User::Legacy => &self.legacy,
        };
        let mut builder = Request::builder().method(req.method).uri(path.as_str());
        if body.is_some() {
            builder = builder.header("content-type", req.content_type);
        }
        let request = builder.body(body.unwrap_or_default().into_bytes()).unwrap();
        let res = match client.send(request.map(kube::client::Body::from)).await {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    code: 0,
                    body: json!(format!("transport error: {e}")),
                    warnings: Vec::new(),
                };
            }
        };
        let code = res.status().as_u16();
        let warnings = res
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(warning_text)
            .collect();
        let watch = path.contains("watch=true");
        // A watch is sent with `timeoutSeconds`: the server ends it.
        let bytes =
            match tokio::time::timeout(Duration::from_secs(30), res.into_body().collect_bytes())
                .await
            {
                Ok(Ok(b)) => b.to_vec(),
                Ok(Err(e)) => format!("body error: {e}").into_bytes(),
                Err(_) => b"the body did not end within 30 s".to_vec(),
            };
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = if watch && code == 200 {
            Value::Array(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!(l)))
                    .collect(),
            )
        } else if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            code,
            body,
            warnings,
        }
    }
}

/// How a case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// A listed difference remains.
    Differs,
    Fail,
}

/// The outcome of every case, and the details of what failed or differs.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<(String, Outcome, Duration)>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::from("| case | outcome | time |\n| --- | --- | --- |\n");
        for (name, o, d) in &self.rows {
            let o = match o {
                Outcome::Pass => "pass",
                Outcome::Differs => "differs (listed)",
                Outcome::Fail => "FAIL",
            };
            s.push_str(&format!("| {name} | {o} | {:.1} s |\n", d.as_secs_f64()));
        }
        s
    }
}

/// The two servers.
pub struct Pair {
    pub real: Side,
    pub sandbox: Side,
}

impl Pair {
    /// Run `case` and record its outcome.
    pub async fn run(&mut self, case: &Case, report: &mut Report) {
        let started = Instant::now();
        let ns = namespace_name(&case.name);
        for side in [&mut self.real, &mut self.sandbox] {
            side.vars.retain(|k, _| k == "issuer");
            side.vars.insert("ns".into(), ns.clone());
        }
        let mut outcome = Outcome::Pass;
        if case.namespace {
            let create = post("/api/v1/namespaces", json!({"metadata": {"name": "{ns}"}}));
            for side in [&self.real, &self.sandbox] {
                let a = side.send(&create.req).await;
                if a.code != 201 {
                    report.failures.push(format!(
                        "{}: the namespace {ns} was not created on {}: {}",
                        case.name,
                        side.name,
                        show(&a)
                    ));
                    outcome = Outcome::Fail;
                }
            }
        }
        if outcome == Outcome::Pass {
            for (i, step) in case.steps.iter().enumerate() {
                match self.step(case, i, step, report).await {
                    Outcome::Pass => {}
                    Outcome::Differs => outcome = Outcome::Differs,
                    Outcome::Fail => {
                        outcome = Outcome::Fail;
                        break;
                    }
                }
            }
        }
        for step in &case.cleanup {
            for side in [&self.real, &self.sandbox] {
                side.send(&step.req).await;
            }
        }
        if case.namespace {
            let del = delete("/api/v1/namespaces/{ns}");
            for side in [&self.real, &self.sandbox] {
                side.send(&del.req).await;
            }
        }
        report
            .rows
            .push((case.name.clone(), outcome, started.elapsed()));
    }

    async fn answer(side: &Side, step: &Step) -> (Answer, bool) {
        let Some((ready, secs)) = step.until else {
            return (side.send(&step.req).await, true);
        };
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let a = side.send(&step.req).await;
            if ready(&a) {
                return (a, true);
            }
            if Instant::now() > deadline {
                return (a, false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn step(&mut self, case: &Case, i: usize, step: &Step, report: &mut Report) -> Outcome {
        let (real, real_ready) = Self::answer(&self.real, step).await;
        let (sandbox, sandbox_ready) = Self::answer(&self.sandbox, step).await;
        for (side, a) in [(&mut self.real, &real), (&mut self.sandbox, &sandbox)] {
            for (var, pointer) in &step.save {
                let v = at(&a.body, pointer);
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                side.vars.insert((*var).to_string(), v);
            }
        }
        if step.quiet {
            return Outcome::Pass;
        }
        let title = format!(
            "{} / step {} ({}): {} {}",
            case.name,
            i + 1,
            step.what,
            step.req.method,
            self.real.render(&step.req).0
        );
        let both = format!(
            "    real:    {}\n    sandbox: {}",
            show(&real),
            show(&sandbox)
        );
        let mut problems = Vec::new();
        if !real_ready {
            problems.push("the real server's answer never became ready".to_string());
        }
        if let Some(code) = step.expect
            && real.code != code
        {
            problems.push(format!(
                "the real server answered {} where the table says {code}",
                real.code
            ));
        }
        if !problems.is_empty() {
            report
                .failures
                .push(format!("{title}\n  {}\n{both}", problems.join("\n  ")));
            return Outcome::Fail;
        }
        let mut diffs = differences(step, &real, &sandbox, &self.real.vars, &self.sandbox.vars);
        if !sandbox_ready {
            diffs.push("the sandbox's answer never became ready".into());
        }
        match (diffs.is_empty(), step.differs) {
            (true, None) => Outcome::Pass,
            (true, Some(why)) => {
                report.notes.push(format!(
                    "{title}: listed as differing ({why}) but the answers agree now"
                ));
                Outcome::Pass
            }
            (false, Some(why)) => {
                report.notes.push(format!(
                    "{title}\n  remaining difference: {why}\n  {}\n{both}",
                    diffs.join("\n  ")
                ));
                Outcome::Differs
            }
            (false, None) => {
                report
                    .failures
                    .push(format!("{title}\n  {}\n{both}", diffs.join("\n  ")));
                Outcome::Fail
            }
        }
    }
}

/// A namespace name for a case: its words, shortened, and a random suffix.
pub fn namespace_name(case: &str) -> String {
    let mut slug: String = case
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("d-{}-{suffix}", slug.trim_end_matches('-'))
}
