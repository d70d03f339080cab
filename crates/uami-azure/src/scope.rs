//! Canonical ARM scopes. A scope is compared, authorized and sent to ARM only in its canonical
//! form: `/subscriptions/{guid}` followed by non-empty segments of printable ASCII, with no `.` or
//! `..` segment (a URL builder would resolve them and silently change the scope), no
//! percent-encoding (ARM would decode it and see another id), no empty segment or trailing `/`,
//! no `?`, `#`, whitespace or backslash. Comparisons are made segment by segment,
//! case-insensitively, as ARM compares ids; never on string prefixes.

use std::fmt;

/// Characters allowed in a segment of a canonical scope (besides ASCII letters and digits).
/// [`SEGMENT_PATTERN`] and the CRD rules say the same.
pub const SEGMENT_PUNCTUATION: &str = "_.()~!$*+,;=:@-";

/// One segment of a canonical scope as a regular expression (RE2 and Rust `regex` alike): the
/// allowed characters, at least one of them not a `.`.
pub const SEGMENT_PATTERN: &str =
    r"[A-Za-z0-9_.()~!$*+,;=:@-]*[A-Za-z0-9_()~!$*+,;=:@-][A-Za-z0-9_.()~!$*+,;=:@-]*";

/// A canonical resource id below a subscription, as a regular expression.
pub fn canonical_id_pattern() -> String {
    format!(
        "^/subscriptions/[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}(/{SEGMENT_PATTERN})*$"
    )
}

/// Why a scope is not canonical.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{scope:?} is not a canonical ARM scope: {problem}")]
pub struct ScopeError {
    /// The scope as given (truncated, escaped by `Debug`).
    pub scope: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A canonical ARM scope below a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmScope {
    text: String,
}

impl fmt::Display for ArmScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

impl ArmScope {
    /// Parse `scope`, refusing anything that is not canonical.
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        let fail = |problem: &str| {
            let shown =
                uami_api::text::truncate(scope.to_string(), uami_api::text::Limit::Chars(200), "");
            Err(ScopeError {
                scope: shown,
                problem: problem.to_string(),
            })
        };
        if scope.len() > 1024 {
            return fail("longer than 1024 characters");
        }
        if let Some(c) = scope.chars().find(|c| !c.is_ascii()) {
            return fail(&format!("non-ASCII character {c:?}"));
        }
        if scope
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return fail("whitespace or a control character");
        }
        for (c, what) in [
            ('%', "percent-encoding"),
            ('?', "a query ('?')"),
            ('#', "a fragment ('#')"),
            ('\\', "a backslash"),
        ] {
            if scope.contains(c) {
                return fail(what);
            }
        }
        let Some(rest) = scope.strip_prefix('/') else {
            return fail("it does not start with '/'");
        };
        if rest.ends_with('/') {
            return fail("a trailing '/'");
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return fail("an empty segment ('//')");
        }
        if segments.iter().any(|s| s.chars().all(|c| c == '.')) {
            return fail("a '.' or '..' segment");
        }
        if let Some(c) = scope
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '/' || SEGMENT_PUNCTUATION.contains(*c)))
        {
            return fail(&format!("the character {c:?}"));
        }
        match segments.as_slice() {
            [s, sub, ..] if s.eq_ignore_ascii_case("subscriptions") && is_guid(sub) => {}
            _ => return fail("it does not start with /subscriptions/{subscription id}"),
        }
        Ok(Self {
            text: scope.to_string(),
        })
    }

    /// The scope as text (exactly as parsed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments after the leading `/`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.text[1..].split('/')
    }

    /// The subscription id.
    pub fn subscription(&self) -> &str {
        self.segments().nth(1).unwrap_or_default()
    }

    /// The resource group, when the scope is a resource group or below one.
    pub fn resource_group(&self) -> Option<&str> {
        let mut s = self.segments().skip(2);
        match (s.next(), s.next()) {
            (Some(r), Some(rg)) if r.eq_ignore_ascii_case("resourceGroups") => Some(rg),
            _ => None,
        }
    }

    /// Whether this scope is `outer` or below it: segment by segment, case-insensitively.
    pub fn is_within(&self, outer: &ArmScope) -> bool {
        let mut mine = self.segments();
        outer
            .segments()
            .all(|o| mine.next().is_some_and(|m| m.eq_ignore_ascii_case(o)))
    }

    /// Whether two scopes name the same thing (ARM ids are case-insensitive).
    pub fn same_as(&self, other: &ArmScope) -> bool {
        self.text.eq_ignore_ascii_case(&other.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";

    #[test]
    fn refuses_every_non_canonical_form() {
        let base = format!("/subscriptions/{SUB}/resourceGroups/DevTest");
        for bad in [
            format!("{base}/../.."),
            format!("{base}/./x"),
            format!("{base}/"),
            format!("{base}//x"),
            format!("{base}/%2e%2e"),
            format!("{base}?x=1"),
            format!("{base}#x"),
            format!("{base} "),
            format!("{base}/a b"),
            format!("{base}\\x"),
            format!("{base}é"),
            format!("{base}\t"),
            format!("subscriptions/{SUB}"),
            "/subscriptions/not-a-guid".to_string(),
            "/providers/Microsoft.Authorization".to_string(),
            String::new(),
        ] {
            assert!(ArmScope::parse(&bad).is_err(), "{bad:?} accepted");
        }
        let ok = ArmScope::parse(&format!(
            "{base}/providers/Microsoft.Storage/storageAccounts/sa1"
        ))
        .unwrap();
        assert_eq!(ok.subscription(), SUB);
        assert_eq!(ok.resource_group(), Some("DevTest"));
    }

    #[test]
    fn within_compares_segments_case_insensitively() {
        let p = |s: &str| ArmScope::parse(&format!("/subscriptions/{SUB}{s}")).unwrap();
        assert!(p("/resourceGroups/devtest/x").is_within(&p("/resourceGroups/DevTest")));
        assert!(p("/resourceGroups/DevTest").is_within(&p("/resourceGroups/DevTest")));
        assert!(!p("/resourceGroups/DevTest2").is_within(&p("/resourceGroups/DevTest")));
        assert!(!p("").is_within(&p("/resourceGroups/DevTest")));
        assert!(p("/resourceGroups/DevTest").is_within(&p("")));
    }

    #[test]
    fn the_pattern_agrees_with_the_parser() {
        let pattern = canonical_id_pattern();
        assert_eq!(pattern, uami_api::common::RESOURCE_ID_PATTERN);
        // The CRD rules spell the same pattern.
        let crds = uami_api::crds_yaml().unwrap();
        assert_eq!(
            crds.matches(&format!("self.matches('{pattern}')")).count(),
            2
        );
        let re = regex_lite(&pattern);
        for (s, ok) in [
            (format!("/subscriptions/{SUB}/resourceGroups/DevTest"), true),
            (format!("/subscriptions/{SUB}/resourceGroups/a.b"), true),
            (format!("/subscriptions/{SUB}/resourceGroups/.."), false),
            (format!("/subscriptions/{SUB}/resourceGroups/"), false),
            (format!("/subscriptions/{SUB}/resourceGroups/a%2e"), false),
        ] {
            assert_eq!(re(&s), ok, "{s}");
            assert_eq!(ArmScope::parse(&s).is_ok(), ok, "{s}");
        }
    }

    /// The pattern through the JSON-schema validator the sandbox uses.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool + use<> {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        let v = jsonschema::validator_for(&schema).unwrap();
        move |s: &str| v.is_valid(&serde_json::json!(s))
    }
}
