"""google.api.http path templates: the grammar, matching and grpc-gateway's decoding."""

from __future__ import annotations

import pytest

from gateway.pathtemplate import TemplateError, parse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/providers", "/v1/providers", {}),
        ("/v1/{name=users/*/tips/*}", "/v1/users/u1/tips/t9", {"name": "users/u1/tips/t9"}),
        ("/v1/{parent=users/*}/tips", "/v1/users/me/tips", {"parent": "users/me"}),
        ("/v1/{name}", "/v1/abc", {"name": "abc"}),
        (
            "/v1/{profile.name=users/*/profile}",
            "/v1/users/u/profile",
            {"profile.name": "users/u/profile"},
        ),
        ("/v1/{name=users/*/tips/*}:react", "/v1/users/u/tips/t:react", {"name": "users/u/tips/t"}),
        ("/v1/files/{path=**}", "/v1/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/files/{path=**}", "/v1/files", {"path": ""}),
        ("/v1/{a}/x/{b.c}", "/v1/1/x/2", {"a": "1", "b.c": "2"}),
        ("/v1/*/literal", "/v1/anything/literal", {}),
        (
            "/v1/{a=shelves/*}/books/{b=**}:verb",
            "/v1/shelves/s/books/x/y:verb",
            {"a": "shelves/s", "b": "x/y"},
        ),
    ],
)
def test_matches(template: str, path: str, expected: dict[str, str]) -> None:
    assert parse(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/{name=users/*/tips/*}", "/v1/users/u1/tips"),
        ("/v1/{name=users/*/tips/*}", "/v1/users/u1/tips/t/extra"),
        ("/v1/{name=users/*/tips/*}", "/v1/users//tips/t"),
        ("/v1/{name=users/*/tips/*}:react", "/v1/users/u/tips/t"),
        ("/v1/{name=users/*/tips/*}:react", "/v1/users/u/tips/t:other"),
        ("/v1/providers", "/v2/providers"),
        ("/v1/providers", "v1/providers"),
    ],
)
def test_does_not_match(template: str, path: str) -> None:
    assert parse(template).match(path) is None


def test_a_template_without_verb_keeps_the_colon_as_data() -> None:
    # As grpc-gateway v2: only a pattern with a verb splits ":verb" off the last segment.
    assert parse("/v1/{name=users/*/tips/*}").match("/v1/users/u/tips/t:react") == {
        "name": "users/u/tips/t:react"
    }


def test_a_colon_inside_an_earlier_segment_is_not_a_verb() -> None:
    assert parse("/v1/{name=things/*}/x").match("/v1/things/a:b/x") == {"name": "things/a:b"}


def test_single_segment_variables_are_fully_decoded() -> None:
    assert parse("/v1/{id}").match("/v1/a%2Fb%20c") == {"id": "a/b c"}


def test_multi_segment_variables_keep_encoded_slashes() -> None:
    assert parse("/v1/{name=**}").match("/v1/a%2Fb/c%20d") == {"name": "a%2Fb/c d"}


def test_specificity_counts_literals() -> None:
    assert parse("/v1/users/{u}/tips").literal_count > parse("/v1/{a}/{b}/tips").literal_count


def test_expand_is_the_inverse_of_match() -> None:
    template = parse("/v1/{name=users/*/tips/*}:react")
    assert template.expand({"name": "users/u/tips/t"}) == "/v1/users/u/tips/t:react"


@pytest.mark.parametrize(
    "bad",
    [
        "v1/x",
        "/v1/{name",
        "/v1/{1bad}",
        "/v1/**/x",
        "/v1/{a}/{a}",
        "/v1/x/",
        "/v1/{a={b}}",
        "/v1/a b",
    ],
)
def test_bad_templates_are_rejected(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse(bad)


def test_every_product_route_parses() -> None:
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pool

    import tips.events.v1.events_service_pb2
    import tips.recommender.v1.recommender_service_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    service = pool.FindServiceByName("tips.recommender.v1.RecommenderService")
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        path = rule.get or rule.post or rule.patch or rule.put or rule.delete
        assert parse(path).variables, path
