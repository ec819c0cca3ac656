use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn unexpected(found: &str, offset: usize, expected: &'static str) -> SelectorError {
    SelectorError::UnexpectedToken {
        found: found.to_owned(),
        offset,
        expected,
    }
}

fn bad_key(key: &str, reason: &str) -> SelectorError {
    SelectorError::InvalidLabelKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

const VALUE_RULE: &str = "must be empty or consist of alphanumerics, '-', '_' and '.', and start \
                          and end with an alphanumeric";

fn bad_value(key: &str, value: &str, reason: &str) -> SelectorError {
    SelectorError::InvalidLabelValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn count(key: &str, operator: &str, expected: &'static str, got: usize) -> SelectorError {
    SelectorError::InvalidValueCount {
        key: key.to_owned(),
        operator: operator.to_owned(),
        expected,
        got,
    }
}

fn not_integer(key: &str, operator: &str, value: &str) -> SelectorError {
    SelectorError::NotAnInteger {
        key: key.to_owned(),
        operator: operator.to_owned(),
        value: value.to_owned(),
    }
}

const AFTER_REQUIREMENT: &str = "',' or end of string";
const OPERATOR: &str =
    "an operator ('=', '==', '!=', 'in', 'notin', '>' or '<'), ',' or end of string";

#[test]
fn label_parse_valid() {
    let long_name = "a".repeat(63);
    let long_prefix = format!("{}.{}", "p".repeat(63), "q".repeat(63));
    let cases: Vec<(String, String)> = [
        ("", ""),
        ("   ", ""),
        (" \t\r\n", ""),
        ("x=a", "x=a"),
        ("x==a", "x==a"),
        ("x!=a", "x!=a"),
        ("x = a", "x=a"),
        ("x\t==\ta\n", "x==a"),
        ("x", "x"),
        (" x ", "x"),
        ("!x", "!x"),
        ("! x", "!x"),
        ("x=", "x="),
        ("x==", "x=="),
        ("x!=", "x!="),
        ("x=,y", "x=,y"),
        ("x>1", "x>1"),
        ("x<10", "x<10"),
        ("x > 007", "x>007"),
        ("x in (a)", "x in (a)"),
        ("x in(a)", "x in (a)"),
        (" x in ( a , b ) ", "x in (a,b)"),
        ("x in (b,a,a)", "x in (a,b)"),
        ("x notin (b,a)", "x notin (a,b)"),
        ("x in ()", "x in ()"),
        ("x in (,)", "x in ()"),
        ("x in (a,)", "x in (,a)"),
        ("x in (,a)", "x in (,a)"),
        ("x in (,,a)", "x in (,a)"),
        ("x notin ()", "x notin ()"),
        ("z,y=b,x in (a)", "x in (a),y=b,z"),
        ("b=1,a=2,b!=3", "a=2,b=1,b!=3"),
        ("b!=3,b=1", "b!=3,b=1"),
        ("!b,a", "a,!b"),
        ("in=notin", "in=notin"),
        ("x=in", "x=in"),
        ("in", "in"),
        ("!notin", "!notin"),
        ("in in (in, notin)", "in in (in,notin)"),
        ("notin notin (x)", "notin notin (x)"),
        ("example.com/app=web", "example.com/app=web"),
        ("a.b-c_d=A.b-C_9", "a.b-c_d=A.b-C_9"),
        ("A=B", "A=B"),
        ("1=2", "1=2"),
        ("x=a,x=b", "x=a,x=b"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .chain([
        (
            format!("{long_name}={long_name}"),
            format!("{long_name}={long_name}"),
        ),
        (
            format!("{long_prefix}/{long_name}"),
            format!("{long_prefix}/{long_name}"),
        ),
    ])
    .collect();
    for (input, canonical) in cases {
        let selector = LabelSelector::parse(&input)
            .unwrap_or_else(|e| panic!("{input:?} should parse, got {e}"));
        assert_eq!(selector.to_string(), canonical, "display of {input:?}");
        let reparsed = LabelSelector::parse(&canonical).unwrap();
        assert_eq!(reparsed, selector, "round trip of {input:?}");
        assert_eq!(reparsed.to_string(), canonical, "display is a fixed point");
    }
}

#[test]
fn label_parse_invalid() {
    let long_name = "a".repeat(64);
    let long_prefix = "p".repeat(254);
    let cases: Vec<(String, SelectorError)> = vec![
        (
            ",".into(),
            unexpected("','", 0, "'!', a label key or end of string"),
        ),
        (
            "=a".into(),
            unexpected("'='", 0, "'!', a label key or end of string"),
        ),
        (
            "(x)".into(),
            unexpected("'('", 0, "'!', a label key or end of string"),
        ),
        (
            "x,".into(),
            unexpected("end of string", 2, "'!' or a label key after ','"),
        ),
        (
            "x,,y".into(),
            unexpected("','", 2, "'!' or a label key after ','"),
        ),
        (
            "x, =a".into(),
            unexpected("'='", 3, "'!' or a label key after ','"),
        ),
        ("x y".into(), unexpected("'y'", 2, OPERATOR)),
        ("x!".into(), unexpected("'!'", 1, OPERATOR)),
        ("x (a)".into(), unexpected("'('", 2, OPERATOR)),
        ("x=a b".into(), unexpected("'b'", 4, AFTER_REQUIREMENT)),
        ("x=a)".into(), unexpected("')'", 3, AFTER_REQUIREMENT)),
        ("!x=a".into(), unexpected("'='", 2, AFTER_REQUIREMENT)),
        ("x in (a) b".into(), unexpected("'b'", 9, AFTER_REQUIREMENT)),
        (
            "x=(a)".into(),
            unexpected("'('", 2, "a value, ',' or end of string"),
        ),
        (
            "x=!a".into(),
            unexpected("'!'", 2, "a value, ',' or end of string"),
        ),
        (
            "x!==a".into(),
            unexpected("'='", 3, "a value, ',' or end of string"),
        ),
        (
            "x===a".into(),
            unexpected("'='", 3, "a value, ',' or end of string"),
        ),
        ("x in a".into(), unexpected("'a'", 5, "'('")),
        ("x in".into(), unexpected("end of string", 4, "'('")),
        ("x notin".into(), unexpected("end of string", 7, "'('")),
        (
            "x in (a".into(),
            unexpected("end of string", 7, "',' or ')'"),
        ),
        ("x in (a b)".into(), unexpected("'b'", 8, "',' or ')'")),
        ("x in (a,,)".into(), unexpected("')'", 9, "a value or ','")),
        (
            "x in (a,".into(),
            unexpected("end of string", 8, "a value or ','"),
        ),
        ("x in (a,=)".into(), unexpected("'='", 8, "a value or ','")),
        (
            "x in (=)".into(),
            unexpected("'='", 6, "a value, ',' or ')'"),
        ),
        (
            "x in (".into(),
            unexpected("end of string", 6, "a value, ',' or ')'"),
        ),
        ("!".into(), unexpected("end of string", 1, "a label key")),
        ("!!x".into(), unexpected("'!'", 1, "a label key")),
        ("!,".into(), unexpected("','", 1, "a label key")),
        (
            "a/b/c".into(),
            bad_key(
                "a/b/c",
                "must be a name with an optional DNS subdomain prefix and a single '/' (e.g. \
                 'app' or 'example.com/app')",
            ),
        ),
        (
            "/a".into(),
            bad_key("/a", "prefix before '/' must not be empty"),
        ),
        ("a/".into(), bad_key("a/", "name part must not be empty")),
        (
            "Example.com/a".into(),
            bad_key(
                "Example.com/a",
                "prefix \"Example.com\" must be a DNS-1123 subdomain: lowercase alphanumerics, \
                 '-' and '.', each dot-separated part starting and ending with an alphanumeric",
            ),
        ),
        (
            "a..b/c".into(),
            bad_key(
                "a..b/c",
                "prefix \"a..b\" must be a DNS-1123 subdomain: lowercase alphanumerics, '-' and \
                 '.', each dot-separated part starting and ending with an alphanumeric",
            ),
        ),
        (
            format!("{long_prefix}/a"),
            bad_key(
                &format!("{long_prefix}/a"),
                "prefix must be no more than 253 characters",
            ),
        ),
        (
            long_name.clone(),
            bad_key(&long_name, "name part must be no more than 63 characters"),
        ),
        (
            "-a=b".into(),
            bad_key(
                "-a",
                "name part \"-a\" must consist of alphanumerics, '-', '_' and '.', and start and \
                 end with an alphanumeric",
            ),
        ),
        (
            "a_".into(),
            bad_key(
                "a_",
                "name part \"a_\" must consist of alphanumerics, '-', '_' and '.', and start and \
                 end with an alphanumeric",
            ),
        ),
        (
            "é=a".into(),
            bad_key(
                "é",
                "name part \"é\" must consist of alphanumerics, '-', '_' and '.', and start and \
                 end with an alphanumeric",
            ),
        ),
        (
            "x=a,b/c/d".into(),
            bad_key(
                "b/c/d",
                "must be a name with an optional DNS subdomain prefix and a single '/' (e.g. \
                 'app' or 'example.com/app')",
            ),
        ),
        // The key is reported even when the rest of the selector is malformed too.
        (
            "-x in (".into(),
            bad_key(
                "-x",
                "name part \"-x\" must consist of alphanumerics, '-', '_' and '.', and start and \
                 end with an alphanumeric",
            ),
        ),
        ("x=-a".into(), bad_value("x", "-a", VALUE_RULE)),
        ("x=a_".into(), bad_value("x", "a_", VALUE_RULE)),
        ("x=a/b".into(), bad_value("x", "a/b", VALUE_RULE)),
        ("x!=a.".into(), bad_value("x", "a.", VALUE_RULE)),
        ("x in (a,-b)".into(), bad_value("x", "-b", VALUE_RULE)),
        (
            format!("x={long_name}"),
            bad_value("x", &long_name, "must be no more than 63 characters"),
        ),
        ("x>a".into(), not_integer("x", ">", "a")),
        ("x<1.5".into(), not_integer("x", "<", "1.5")),
        ("x>".into(), not_integer("x", ">", "")),
        (
            "x>99999999999999999999".into(),
            not_integer("x", ">", "99999999999999999999"),
        ),
        // A negative bound is not a valid label value, so upstream rejects it too.
        ("x>-1".into(), bad_value("x", "-1", VALUE_RULE)),
    ];
    for (input, expected) in cases {
        assert_eq!(
            LabelSelector::parse(&input),
            Err(expected),
            "error for {input:?}"
        );
    }
}

#[test]
fn label_error_messages() {
    let cases = [
        (
            "x in (a b)",
            "unable to parse label selector: found 'b' at offset 8, expected ',' or ')'",
        ),
        (
            "x,",
            "unable to parse label selector: found end of string at offset 2, expected '!' or a \
             label key after ','",
        ),
        (
            "/a",
            "invalid label key \"/a\": prefix before '/' must not be empty",
        ),
        (
            "x=-a",
            "invalid value \"-a\" for label key \"x\": must be empty or consist of alphanumerics, \
             '-', '_' and '.', and start and end with an alphanumeric",
        ),
        (
            "x>a",
            "value \"a\" for label key \"x\" must be an integer for operator \">\"",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(
            LabelSelector::parse(input).unwrap_err().to_string(),
            message,
            "message for {input:?}"
        );
    }
}

#[test]
fn label_matching_truth_table() {
    let sets = [
        labels(&[]),
        labels(&[("x", "a")]),
        labels(&[("x", "b")]),
        labels(&[("x", "")]),
        labels(&[("y", "a")]),
        labels(&[("x", "5")]),
        labels(&[("x", "a"), ("y", "a")]),
    ];
    // One column per label set above.
    let table: &[(&str, [bool; 7])] = &[
        ("", [true, true, true, true, true, true, true]),
        ("x=a", [false, true, false, false, false, false, true]),
        ("x==a", [false, true, false, false, false, false, true]),
        ("x!=a", [true, false, true, true, true, true, false]),
        ("x in (a,b)", [false, true, true, false, false, false, true]),
        (
            "x notin (a,b)",
            [true, false, false, true, true, true, false],
        ),
        ("x", [false, true, true, true, false, true, true]),
        ("!x", [true, false, false, false, true, false, false]),
        ("x=", [false, false, false, true, false, false, false]),
        ("x!=", [true, true, true, false, true, true, true]),
        ("x in ()", [false, false, false, true, false, false, false]),
        ("x in (,a)", [false, true, false, true, false, false, true]),
        ("x notin ()", [true, true, true, false, true, true, true]),
        ("x>4", [false, false, false, false, false, true, false]),
        ("x>5", [false, false, false, false, false, false, false]),
        ("x<6", [false, false, false, false, false, true, false]),
        ("x=a,y=a", [false, false, false, false, false, false, true]),
        ("x=a,!y", [false, true, false, false, false, false, false]),
        ("x,y", [false, false, false, false, false, false, true]),
        ("!x,!y", [true, false, false, false, false, false, false]),
        ("x!=a,x!=b", [true, false, false, true, true, true, false]),
        ("x=a,x=b", [false, false, false, false, false, false, false]),
        ("y notin (a)", [true, true, true, true, false, true, false]),
    ];
    for (selector, expected) in table {
        let parsed = LabelSelector::parse(selector).unwrap();
        for (set, want) in sets.iter().zip(expected) {
            assert_eq!(parsed.matches(set), *want, "{selector:?} against {set:?}");
            let object = json!({"metadata": {"labels": set}});
            assert_eq!(
                parsed.matches_object(&object),
                *want,
                "{selector:?} on object"
            );
        }
    }
}

#[test]
fn everything_and_nothing() {
    let everything = LabelSelector::everything();
    let nothing = LabelSelector::nothing();
    assert!(everything.is_everything() && !everything.is_nothing());
    assert!(nothing.is_nothing() && !nothing.is_everything());
    assert_eq!(LabelSelector::parse("").unwrap(), everything);
    assert_eq!(LabelSelector::default(), everything);
    assert_eq!(LabelSelector::from_metav1(&json!({})).unwrap(), everything);
    assert_eq!(LabelSelector::from_metav1(&Value::Null).unwrap(), nothing);
    assert_ne!(everything, nothing);
    for set in [labels(&[]), labels(&[("a", "b")])] {
        assert!(everything.matches(&set));
        assert!(!nothing.matches(&set));
    }
    assert!(!nothing.matches_object(&json!({})));
    assert!(nothing.requirements().is_empty());
    // Upstream prints nothing as "", which reads back as everything: the caller must not
    // round-trip a nothing selector through its string form.
    assert_eq!(nothing.to_string(), "");
}

#[test]
fn label_from_metav1_valid() {
    let cases = [
        (json!({"matchLabels": {}}), ""),
        (json!({"matchLabels": null, "matchExpressions": null}), ""),
        (json!({"matchExpressions": []}), ""),
        (json!({"matchLabels": {"b": "2", "a": "1"}}), "a=1,b=2"),
        (json!({"matchLabels": {"a": ""}}), "a="),
        (
            json!({"matchExpressions": [
                {"key": "d", "operator": "DoesNotExist"},
                {"key": "c", "operator": "Exists", "values": []},
                {"key": "b", "operator": "NotIn", "values": ["z"]},
                {"key": "a", "operator": "In", "values": ["y", "x", "y"]},
            ]}),
            "a in (x,y),b notin (z),c,!d",
        ),
        (
            json!({"matchLabels": {"a": "1"}, "matchExpressions": [
                {"key": "a", "operator": "Exists", "values": null}
            ]}),
            "a=1,a",
        ),
        (
            json!({"matchLabels": {"app": "web"}, "unknownField": 1}),
            "app=web",
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [""]}]}),
            "a in ()",
        ),
    ];
    for (input, canonical) in cases {
        let selector = LabelSelector::from_metav1(&input)
            .unwrap_or_else(|e| panic!("{input} should convert, got {e}"));
        assert_eq!(selector.to_string(), canonical, "display of {input}");
        assert_eq!(
            LabelSelector::parse(canonical).unwrap(),
            selector,
            "string form of {input} parses back to the same selector"
        );
    }
}

#[test]
fn label_from_metav1_invalid() {
    let malformed = |s: &str| SelectorError::MalformedLabelSelector(s.to_owned());
    let cases = [
        (
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
            count("a", "in", "at least one value", 0),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "NotIn"}]}),
            count("a", "notin", "at least one value", 0),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            count("a", "Exists", "no values", 1),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x", "y"]}]}),
            count("a", "DoesNotExist", "no values", 2),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
            SelectorError::UnknownOperator {
                operator: "Gt".into(),
            },
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "in", "values": ["1"]}]}),
            SelectorError::UnknownOperator {
                operator: "in".into(),
            },
        ),
        (
            json!({"matchExpressions": [{"key": "a"}]}),
            SelectorError::UnknownOperator {
                operator: String::new(),
            },
        ),
        (
            json!({"matchExpressions": [{"operator": "Exists"}]}),
            bad_key("", "name part must not be empty"),
        ),
        (
            json!({"matchLabels": {"a": "-x"}}),
            bad_value("a", "-x", VALUE_RULE),
        ),
        (
            json!({"matchLabels": {"a/b/c": "x"}}),
            bad_key(
                "a/b/c",
                "must be a name with an optional DNS subdomain prefix and a single '/' (e.g. \
                 'app' or 'example.com/app')",
            ),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "-x"]}]}),
            bad_value("a", "-x", VALUE_RULE),
        ),
        (
            json!("app=web"),
            malformed("expected an object or null, got a string"),
        ),
        (
            json!({"matchLabels": {"a": 1}}),
            malformed("matchLabels[\"a\"] must be a string, got a number"),
        ),
        (
            json!({"matchLabels": ["a"]}),
            malformed("matchLabels must be an object, got an array"),
        ),
        (
            json!({"matchExpressions": {}}),
            malformed("matchExpressions must be an array, got an object"),
        ),
        (
            json!({"matchExpressions": [1]}),
            malformed("matchExpressions[0] must be an object, got a number"),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": 1}]}),
            malformed("matchExpressions[1].key must be a string, got a number"),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}),
            malformed("matchExpressions[0].values must be an array, got a string"),
        ),
        (
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", true]}]}),
            malformed("matchExpressions[0].values[1] must be a string, got a boolean"),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            LabelSelector::from_metav1(&input),
            Err(expected),
            "error for {input}"
        );
    }
    assert_eq!(
        LabelSelector::from_metav1(&json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
            .unwrap_err()
            .to_string(),
        "operator \"in\" for label key \"a\" takes at least one value, got 0"
    );
    assert_eq!(
        LabelSelector::from_metav1(&json!({"matchExpressions": [{"key": "a", "operator": "Gt"}]}))
            .unwrap_err()
            .to_string(),
        "\"Gt\" is not a valid label selector operator"
    );
}

#[test]
fn label_matches_object() {
    let selector = LabelSelector::parse("app=web,!canary").unwrap();
    assert!(selector.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
    assert!(!selector.matches_object(&json!({"metadata": {"labels": {"app": "db"}}})));
    assert!(
        !selector.matches_object(&json!({"metadata": {"labels": {"app": "web", "canary": ""}}}))
    );
    assert!(!selector.matches_object(&json!({"metadata": {}})));
    assert!(!selector.matches_object(&json!({})));
    // Labels that are not strings cannot come out of validation; they count as absent.
    assert!(!selector.matches_object(&json!({"metadata": {"labels": {"app": 1}}})));
    let negative = LabelSelector::parse("app!=web").unwrap();
    assert!(negative.matches_object(&json!({"kind": "Pod"})));
    assert!(negative.matches_object(&json!({"metadata": {"labels": null}})));
    assert!(LabelSelector::everything().matches_object(&json!(null)));
}

#[test]
fn label_matches_with() {
    let selector = LabelSelector::parse("a in (1,2),b").unwrap();
    let lookup = |key: &str| match key {
        "a" => Some("2"),
        "b" => Some(""),
        _ => None,
    };
    assert!(selector.matches_with(lookup));
    assert!(!selector.matches_with(|_| None));
    assert!(selector.requirements()[0].matches_with(lookup));
}

#[test]
fn label_requires_exact_match() {
    let selector = LabelSelector::parse("a=x,b in (y),c in (p,q),d!=z,e==w,f,g in ()").unwrap();
    let cases = [
        ("a", Some("x")),
        ("b", Some("y")),
        ("c", None),
        ("d", None),
        ("e", Some("w")),
        ("f", None),
        ("g", Some("")),
        ("h", None),
    ];
    for (key, expected) in cases {
        assert_eq!(selector.requires_exact_match(key), expected, "key {key}");
    }
    assert_eq!(LabelSelector::nothing().requires_exact_match("a"), None);
}

#[test]
fn label_from_labels() {
    assert_eq!(
        LabelSelector::from_labels(&labels(&[])).unwrap(),
        LabelSelector::everything()
    );
    let selector = LabelSelector::from_labels(&labels(&[("b", "2"), ("a", "1")])).unwrap();
    assert_eq!(selector.to_string(), "a=1,b=2");
    assert!(selector.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "3")])));
    assert!(!selector.matches(&labels(&[("a", "1")])));
    assert_eq!(
        LabelSelector::from_labels(&labels(&[("a", "x y")])),
        Err(bad_value("a", "x y", VALUE_RULE))
    );
}

#[test]
fn requirement_new() {
    let ok = Requirement::new("a", Operator::In, ["y", "x", "y"]).unwrap();
    assert_eq!(ok.key(), "a");
    assert_eq!(ok.operator(), Operator::In);
    assert_eq!(ok.values().iter().collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(ok.to_string(), "a in (x,y)");
    assert!(ok.matches(&labels(&[("a", "x")])));

    let none: [&str; 0] = [];
    let cases = [
        (
            Requirement::new("a", Operator::Equals, ["x", "x"]),
            count("a", "=", "exactly one value", 2),
        ),
        (
            Requirement::new("a", Operator::NotEquals, none),
            count("a", "!=", "exactly one value", 0),
        ),
        (
            Requirement::new("a", Operator::GreaterThan, ["1", "2"]),
            count("a", ">", "exactly one value", 2),
        ),
        (
            Requirement::new("a", Operator::Exists, [""]),
            count("a", "Exists", "no values", 1),
        ),
        (
            Requirement::new("a", Operator::NotIn, none),
            count("a", "notin", "at least one value", 0),
        ),
        (
            Requirement::new("", Operator::Exists, none),
            bad_key("", "name part must not be empty"),
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(result, Err(expected));
    }
}

#[test]
fn label_from_str_and_from_requirements() {
    let parsed: LabelSelector = "b=1,a".parse().unwrap();
    let built = LabelSelector::from_requirements([
        Requirement::new("b", Operator::Equals, ["1"]).unwrap(),
        Requirement::new("a", Operator::Exists, Vec::<String>::new()).unwrap(),
    ]);
    assert_eq!(parsed, built);
    assert_eq!(built.to_string(), "a,b=1");
    assert_eq!(Operator::DoesNotExist.to_string(), "DoesNotExist");
}

/// Input, canonical form, and the expected `(field, operator, value)` terms.
type FieldCase<'a> = (&'a str, &'a str, &'a [(&'a str, FieldOperator, &'a str)]);

#[test]
fn field_parse_valid() {
    let eq = FieldOperator::Equals;
    let ne = FieldOperator::NotEquals;
    let cases: &[FieldCase<'_>] = &[
        ("", "", &[]),
        (",", "", &[]),
        (
            "metadata.name=x",
            "metadata.name=x",
            &[("metadata.name", eq, "x")],
        ),
        (
            "metadata.name==x",
            "metadata.name=x",
            &[("metadata.name", eq, "x")],
        ),
        (
            "metadata.name!=x",
            "metadata.name!=x",
            &[("metadata.name", ne, "x")],
        ),
        (
            "spec.nodeName=n,status.phase!=Succeeded,status.phase!=Failed",
            "spec.nodeName=n,status.phase!=Failed,status.phase!=Succeeded",
            &[
                ("spec.nodeName", eq, "n"),
                ("status.phase", ne, "Failed"),
                ("status.phase", ne, "Succeeded"),
            ],
        ),
        (
            "involvedObject.namespace=",
            "involvedObject.namespace=",
            &[("involvedObject.namespace", eq, "")],
        ),
        ("a!=", "a!=", &[("a", ne, "")]),
        ("a==", "a=", &[("a", eq, "")]),
        (r"a=x\,y", r"a=x\,y", &[("a", eq, "x,y")]),
        (r"a=x\=y", r"a=x\=y", &[("a", eq, "x=y")]),
        (r"a=x\\y", r"a=x\\y", &[("a", eq, r"x\y")]),
        (r"a=\\", r"a=\\", &[("a", eq, r"\")]),
        (r"a=\,\=\\", r"a=\,\=\\", &[("a", eq, r",=\")]),
        ("a=b,,c=d", "a=b,c=d", &[("a", eq, "b"), ("c", eq, "d")]),
        (",a=b,", "a=b", &[("a", eq, "b")]),
        (" a = b ", " a = b ", &[(" a ", eq, " b ")]),
        ("=x", "=x", &[("", eq, "x")]),
        ("a!b=c", "a!b=c", &[("a!b", eq, "c")]),
        ("a=!b", "a=!b", &[("a", eq, "!b")]),
        ("a=x y", "a=x y", &[("a", eq, "x y")]),
        ("a=é", "a=é", &[("a", eq, "é")]),
        // No escaping in field names: the first operator splits, backslash or not.
        (r"a\=b", r"a\=b", &[(r"a\", eq, "b")]),
        ("b=1,a=2", "a=2,b=1", &[("a", eq, "2"), ("b", eq, "1")]),
        ("a=x,a==x", "a=x,a=x", &[("a", eq, "x"), ("a", eq, "x")]),
    ];
    for (input, canonical, requirements) in cases {
        let selector = FieldSelector::parse(input)
            .unwrap_or_else(|e| panic!("{input:?} should parse, got {e}"));
        let got: Vec<_> = selector
            .requirements()
            .iter()
            .map(|r| (r.field(), r.operator(), r.value()))
            .collect();
        assert_eq!(got, *requirements, "requirements of {input:?}");
        assert_eq!(selector.to_string(), *canonical, "display of {input:?}");
        assert_eq!(
            FieldSelector::parse(canonical).unwrap(),
            selector,
            "round trip of {input:?}"
        );
        assert_eq!(selector.is_everything(), requirements.is_empty());
    }
}

#[test]
fn field_parse_invalid() {
    let missing = |t: &str| SelectorError::MissingFieldOperator { term: t.to_owned() };
    let escape = |v: &str, s: &str| SelectorError::InvalidEscapeSequence {
        value: v.to_owned(),
        sequence: s.to_owned(),
    };
    let unescaped = |v: &str, c: char| SelectorError::UnescapedCharacter {
        value: v.to_owned(),
        character: c,
    };
    let cases = [
        ("a", missing("a")),
        ("a=b,c", missing("c")),
        ("a<b", missing("a<b")),
        ("a!b", missing("a!b")),
        ("a=b=c", unescaped("b=c", '=')),
        ("a===b", unescaped("=b", '=')),
        ("a!==b", unescaped("=b", '=')),
        (r"a=b\", escape(r"b\", r"\")),
        (r"a=\n", escape(r"\n", r"\n")),
        (r"a=x\ y", escape(r"x\ y", r"\ ")),
        (r"a=\é", escape(r"\é", r"\é")),
    ];
    for (input, expected) in cases {
        assert_eq!(
            FieldSelector::parse(input),
            Err(expected),
            "error for {input:?}"
        );
    }
    assert_eq!(
        FieldSelector::parse("a=b=c").unwrap_err().to_string(),
        "invalid field selector value \"b=c\": '=' must be escaped with a backslash"
    );
    assert_eq!(
        FieldSelector::parse("x").unwrap_err().to_string(),
        "invalid field selector term \"x\": expected <field>=<value>, <field>==<value> or \
         <field>!=<value>"
    );
}

#[test]
fn field_matching_truth_table() {
    let maps = [
        labels(&[]),
        labels(&[("a", "x")]),
        labels(&[("a", "")]),
        labels(&[("a", "y"), ("b", "x")]),
        labels(&[("a", "x,y")]),
    ];
    let table: &[(&str, [bool; 5])] = &[
        ("", [true, true, true, true, true]),
        ("a=x", [false, true, false, false, false]),
        ("a==x", [false, true, false, false, false]),
        ("a!=x", [true, false, true, true, true]),
        // An absent field reads as the empty value, in both directions.
        ("a=", [true, false, true, false, false]),
        ("a!=", [false, true, false, true, true]),
        ("a!=x,b=x", [false, false, false, true, false]),
        ("a=x,a=y", [false, false, false, false, false]),
        (r"a=x\,y", [false, false, false, false, true]),
    ];
    for (selector, expected) in table {
        let parsed = FieldSelector::parse(selector).unwrap();
        for (map, want) in maps.iter().zip(expected) {
            assert_eq!(parsed.matches(map), *want, "{selector:?} against {map:?}");
            assert_eq!(
                parsed.matches_with(|f| map.get(f).cloned()),
                *want,
                "{selector:?} against {map:?} via lookup"
            );
        }
    }
}

#[test]
fn field_check_fields() {
    let selector = FieldSelector::parse("metadata.name=x,spec.nodeName=n").unwrap();
    assert_eq!(selector.check_fields(|_| true), Ok(()));
    assert_eq!(
        selector.check_fields(|f| f.starts_with("metadata.")),
        Err(SelectorError::UnsupportedField {
            field: "spec.nodeName".into()
        })
    );
    assert_eq!(
        selector
            .check_fields(|f| f == "spec.nodeName")
            .unwrap_err()
            .to_string(),
        "field label not supported: metadata.name"
    );
    assert_eq!(FieldSelector::everything().check_fields(|_| false), Ok(()));
}

#[test]
fn field_requires_exact_match() {
    let selector = FieldSelector::parse("metadata.name=x,spec.nodeName!=n,b==y").unwrap();
    assert_eq!(selector.requires_exact_match("metadata.name"), Some("x"));
    assert_eq!(selector.requires_exact_match("b"), Some("y"));
    assert_eq!(selector.requires_exact_match("spec.nodeName"), None);
    assert_eq!(selector.requires_exact_match("other"), None);
    let empty = FieldSelector::parse("involvedObject.namespace=").unwrap();
    assert_eq!(
        empty.requires_exact_match("involvedObject.namespace"),
        Some("")
    );
}

#[test]
fn field_common_fields() {
    let pod = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}});
    assert_eq!(
        common_fields(&pod),
        labels(&[("metadata.name", "p"), ("metadata.namespace", "default")])
    );
    let node = json!({"metadata": {"name": "n1"}});
    assert_eq!(
        common_fields(&node),
        labels(&[("metadata.name", "n1"), ("metadata.namespace", "")])
    );
    assert_eq!(
        common_fields(&json!(null)),
        labels(&[("metadata.name", ""), ("metadata.namespace", "")])
    );
    let selector = FieldSelector::parse("metadata.name=p,metadata.namespace=default").unwrap();
    assert!(selector.matches(&common_fields(&pod)));
    assert!(!selector.matches(&common_fields(&node)));
}

#[test]
fn field_builders() {
    let built = FieldSelector::from_requirements([
        FieldRequirement::new("b", FieldOperator::NotEquals, "x,y"),
        FieldRequirement::new("a", FieldOperator::Equals, ""),
    ]);
    assert_eq!(built.to_string(), r"a=,b!=x\,y");
    let parsed: FieldSelector = r"b!=x\,y,a==".parse().unwrap();
    assert_eq!(parsed, built);
    assert_eq!(FieldSelector::default(), FieldSelector::everything());
    assert_eq!(FieldOperator::NotEquals.as_str(), "!=");
}

// Property tests: selectors built from random parts print to a string that parses back to the
// same selector, which then selects exactly the same label sets as the original and as an
// independent model of the semantics.

const KEYS: &[&str] = &["a", "b", "in", "notin", "example.com/c", "x.y-z_0"];
const VALUES: &[&str] = &["", "x", "y", "in", "1", "5", "A.b-c_9"];
const INTEGERS: &[&str] = &["0", "1", "5", "007", "42"];

fn requirement_strategy() -> impl Strategy<Value = Requirement> {
    let key = proptest::sample::select(KEYS);
    let set = proptest::collection::vec(proptest::sample::select(VALUES), 1..4);
    let one = proptest::sample::select(VALUES);
    let int = proptest::sample::select(INTEGERS);
    prop_oneof![
        (key.clone(), one.clone()).prop_map(|(k, v)| (k, Operator::Equals, vec![v])),
        (key.clone(), one.clone()).prop_map(|(k, v)| (k, Operator::DoubleEquals, vec![v])),
        (key.clone(), one).prop_map(|(k, v)| (k, Operator::NotEquals, vec![v])),
        (key.clone(), set.clone()).prop_map(|(k, v)| (k, Operator::In, v)),
        (key.clone(), set).prop_map(|(k, v)| (k, Operator::NotIn, v)),
        key.clone().prop_map(|k| (k, Operator::Exists, vec![])),
        key.clone()
            .prop_map(|k| (k, Operator::DoesNotExist, vec![])),
        (key.clone(), int.clone()).prop_map(|(k, v)| (k, Operator::GreaterThan, vec![v])),
        (key, int).prop_map(|(k, v)| (k, Operator::LessThan, vec![v])),
    ]
    .prop_map(|(key, operator, values)| Requirement::new(key, operator, values).unwrap())
}

fn label_set_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    let value = prop_oneof![
        proptest::sample::select(VALUES),
        proptest::sample::select(INTEGERS)
    ];
    proptest::collection::btree_map(
        proptest::sample::select(KEYS).prop_map(str::to_owned),
        value.prop_map(str::to_owned),
        0..4,
    )
}

/// The documented semantics, written independently of the implementation.
fn model(requirement: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let actual = labels.get(requirement.key());
    let values = requirement.values();
    let int = |s: &str| s.parse::<i64>().ok();
    match requirement.operator() {
        Operator::Equals | Operator::DoubleEquals | Operator::In => {
            actual.is_some_and(|a| values.contains(a))
        }
        Operator::NotEquals | Operator::NotIn => actual.is_none_or(|a| !values.contains(a)),
        Operator::Exists => actual.is_some(),
        Operator::DoesNotExist => actual.is_none(),
        Operator::GreaterThan => actual
            .and_then(|a| int(a))
            .is_some_and(|a| a > int(values.first().unwrap()).unwrap()),
        Operator::LessThan => actual
            .and_then(|a| int(a))
            .is_some_and(|a| a < int(values.first().unwrap()).unwrap()),
    }
}

/// Re-spaces a canonical selector the way a human might type it, which must not change it.
fn respace(canonical: &str) -> String {
    canonical
        .replace(',', " ,\t")
        .replace("!=", " != ")
        .replace('(', "( ")
        .replace(')', " )")
}

fn field_requirement_strategy() -> impl Strategy<Value = FieldRequirement> {
    // Field names exclude `!` and `=`: upstream cannot tell `a!` `=` `x` from `a` `!=` `x`.
    let field = "[a-z]{1,3}(\\.[a-zA-Z]{1,3})?";
    let value = "[a-z,=\\\\! .é]{0,5}";
    let operator = prop_oneof![Just(FieldOperator::Equals), Just(FieldOperator::NotEquals)];
    (field, operator, value).prop_map(|(f, o, v)| FieldRequirement::new(f, o, v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn label_selector_round_trips(
        requirements in proptest::collection::vec(requirement_strategy(), 0..5),
        sets in proptest::collection::vec(label_set_strategy(), 1..8),
    ) {
        let built = LabelSelector::from_requirements(requirements.clone());
        let canonical = built.to_string();
        let parsed = LabelSelector::parse(&canonical).unwrap();
        prop_assert_eq!(&parsed, &built);
        prop_assert_eq!(parsed.to_string(), canonical.clone());
        prop_assert_eq!(LabelSelector::parse(&respace(&canonical)).unwrap(), built.clone());
        for set in &sets {
            let expected = requirements.iter().all(|r| model(r, set));
            prop_assert_eq!(built.matches(set), expected);
            prop_assert_eq!(parsed.matches(set), expected);
            let object = json!({"metadata": {"labels": set}});
            prop_assert_eq!(parsed.matches_object(&object), expected);
        }
    }

    #[test]
    fn label_parse_never_panics(input in "[a-z =!(),<>in\\t/.-]{0,16}") {
        if let Ok(selector) = LabelSelector::parse(&input) {
            let canonical = selector.to_string();
            prop_assert_eq!(LabelSelector::parse(&canonical).unwrap(), selector);
        }
    }

    #[test]
    fn field_selector_round_trips(
        requirements in proptest::collection::vec(field_requirement_strategy(), 0..5),
        maps in proptest::collection::vec(
            proptest::collection::btree_map("[a-z]{1,2}", "[a-z,=\\\\! ]{0,2}", 0..4),
            1..6,
        ),
    ) {
        let built = FieldSelector::from_requirements(requirements.clone());
        let canonical = built.to_string();
        let parsed = FieldSelector::parse(&canonical).unwrap();
        prop_assert_eq!(&parsed, &built);
        prop_assert_eq!(parsed.to_string(), canonical);
        for map in &maps {
            let expected = requirements.iter().all(|r| {
                let actual = map.get(r.field()).map_or("", String::as_str);
                (actual == r.value()) == (r.operator() == FieldOperator::Equals)
            });
            prop_assert_eq!(built.matches(map), expected);
            prop_assert_eq!(parsed.matches(map), expected);
        }
    }

    #[test]
    fn field_parse_never_panics(input in "[a-z=!,\\\\ é]{0,12}") {
        if let Ok(selector) = FieldSelector::parse(&input) {
            let canonical = selector.to_string();
            prop_assert_eq!(FieldSelector::parse(&canonical).unwrap(), selector);
        }
    }
}
