"""Label and field selector parsing, canonical form, matching and kube's error texts (labels.Parse,
metav1.LabelSelectorAsSelector and fields.ParseSelector)."""

from __future__ import annotations

import pytest

from ultraplane.apiserver.selectors import (
    SelectorError,
    label_selector_from_dict,
    parse_field_selector,
    parse_label_selector,
)
from ultraplane.apiserver.validation import LABEL_VALUE_MSG, QUALIFIED_NAME_MSG


def test_label_selector_operators_and_matching() -> None:
    sel = parse_label_selector("env in (prod, dev),tier!=db,app=web,!legacy,team,x==y,zone notin (a)")
    assert str(sel) == "app=web,env in (dev,prod),!legacy,team,tier!=db,x==y,zone notin (a)"
    good = {"env": "prod", "tier": "fe", "app": "web", "team": "t", "x": "y"}
    assert sel.matches(good)
    for key, value in [("env", "qa"), ("tier", "db"), ("app", "api"), ("legacy", "1"), ("zone", "a")]:
        assert not sel.matches({**good, key: value})
    assert not sel.matches({k: v for k, v in good.items() if k != "team"})
    assert parse_label_selector("").empty and parse_label_selector("").matches({"a": "b"})
    assert parse_label_selector("a=").matches({"a": ""})


def test_label_selector_empty_values_and_numeric_comparisons() -> None:
    # "()" and empty list members mean the empty value, as in upstream's grammar
    assert str(parse_label_selector("a in ()")) == "a in ()"
    assert str(parse_label_selector("x in (foo,,baz)")) == "x in (,baz,foo)"
    assert parse_label_selector("a in ()").matches({"a": ""})
    assert not parse_label_selector("a in ()").matches({})
    # notin and != also match objects without the label
    assert parse_label_selector("a notin (b)").matches({}) and parse_label_selector("a!=b").matches({})
    gt = parse_label_selector("replicas>2,b<10")
    assert str(gt) == "b<10,replicas>2"
    assert gt.matches({"replicas": "3", "b": "-1"})
    assert not gt.matches({"replicas": "2", "b": "1"}) and not gt.matches({"replicas": "x", "b": "1"})
    assert not gt.matches({"b": "1"})
    # "in" is a keyword only where an operator is expected
    assert parse_label_selector("in in (in)").matches({"in": "in"})


@pytest.mark.parametrize(("text", "message"), [
    ("app=-bad", f'unable to parse requirement: values[0][app]: Invalid value: "-bad": {LABEL_VALUE_MSG}'),
    ("-app=x", f'unable to parse requirement: <nil>: Invalid value: "-app": {QUALIFIED_NAME_MSG}'),
    ("a in (y,-x,-z)", "unable to parse requirement: [values[0][a]: Invalid value: \"-x\": "
     f"{LABEL_VALUE_MSG}, values[1][a]: Invalid value: \"-z\": {LABEL_VALUE_MSG}]"),
    ("a>b", "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value "
     "must be an integer"),
    ("app=a b", "found 'b', expected: ',' or 'end of string'"),
    ("a in (b", "unable to parse requirement: found '', expected: ',' or ')'"),
    ("a in b", "unable to parse requirement: found 'b' expected: '('"),
    ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
    ("a=b,", "found '', expected: identifier after ','"),
    ("a=b,=c", "found '=', expected: identifier after ','"),
    ("=a", "found '=', expected: !, identifier, or 'end of string'"),
    ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
    ("!", "unable to parse requirement: found '', expected: identifier"),
    ("a==(b)", "unable to parse requirement: found '(', expected: identifier"),
])
def test_label_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_label_selector(text)
    assert str(exc.value) == message


def test_label_selector_from_dict() -> None:
    sel = label_selector_from_dict({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["b", "a"]}, {"key": "old", "operator": "DoesNotExist"}]})
    assert str(sel) == "app=web,env in (a,b),!old"
    assert sel.matches({"app": "web", "env": "a"}) and not sel.matches({"app": "web", "env": "a", "old": "1"})
    assert label_selector_from_dict({}).empty and label_selector_from_dict({}).matches({"a": "b"})
    nothing = label_selector_from_dict(None)  # a nil selector selects nothing
    assert not nothing.empty and not nothing.matches({})
    cases = [
        ({"matchExpressions": [{"key": "a", "operator": "Foo"}]}, '"Foo" is not a valid label selector operator'),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
         "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
         "values: Invalid value: [\"x\"]: values set must be empty for exists and does not exist"),
        ({"matchLabels": {"a/b/c": "x"}}, 'key: Invalid value: "a/b/c": a qualified name must consist of '
         "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
         "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
         "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' "
         "(e.g. 'example.com/MyName')"),
    ]
    for selector, message in cases:
        with pytest.raises(SelectorError) as exc:
            label_selector_from_dict(selector)
        assert str(exc.value) == message


def test_field_selector() -> None:
    sel = parse_field_selector("status.phase!=Running,metadata.name=a\\,b,spec.nodeName==n1")
    # terms are sorted as fields.ParseSelector sorts them
    assert sel.requirements == (("metadata.name", "=", "a,b"), ("spec.nodeName", "=", "n1"),
                                ("status.phase", "!=", "Running"))
    assert str(sel) == "metadata.name=a\\,b,spec.nodeName=n1,status.phase!=Running"
    assert sel.matches({"metadata.name": "a,b", "status.phase": "Pending", "spec.nodeName": "n1"})
    assert not sel.matches({"metadata.name": "a,b", "status.phase": "Running", "spec.nodeName": "n1"})
    assert parse_field_selector("").empty and parse_field_selector(",,").empty
    assert parse_field_selector("a=").requirements == (("a", "=", ""),)
    cases = [
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        ("a=b=c", "invalid field selector: unescaped character in value: 61"),
        ("a=b\\x", "invalid field selector: invalid escape sequence: \\x"),
        ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
    ]
    for text, message in cases:
        with pytest.raises(SelectorError) as exc:
            parse_field_selector(text)
        assert str(exc.value) == message
