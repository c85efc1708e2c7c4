"""Redaction: each kind found and masked, look-alikes kept, JSON walking, tenants, allow lists, no network."""

from __future__ import annotations

import ast
import copy
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tether.policy.redaction as redaction_module
from tether.errors import ConfigurationError
from tether.policy.redaction import KINDS, Finding, JsonValue, RedactionPolicy, Redactor, secret_key_kind

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq0\nabcDEF123==\n-----END RSA PRIVATE KEY-----"
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f"

# (text, [(kind, the part that must be masked)])
POSITIVES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Contact jane.doe+tag@example.co.uk today", [("email", "jane.doe+tag@example.co.uk")]),
    ("mail: ops@sub.mail.example.com.", [("email", "ops@sub.mail.example.com")]),
    ("mailto:Jörg.Müller@bücher.de", [("email", "Jörg.Müller@bücher.de")]),
    ("Call +1 415-555-0132 now", [("phone", "+1 415-555-0132")]),
    ("Call +1 (415) 555-0132 now", [("phone", "+1 (415) 555-0132")]),
    ("Call (415) 555-0132 now", [("phone", "(415) 555-0132")]),
    ("US: 415.555.0132", [("phone", "415.555.0132")]),
    ("toll free 1-800-555-0199", [("phone", "1-800-555-0199")]),
    ("UK +44 20 7946 0958", [("phone", "+44 20 7946 0958")]),
    ("UK 020 7946 0958", [("phone", "020 7946 0958")]),
    ("UK mobile 07700 900123", [("phone", "07700 900123")]),
    ("DE +49 30 1234567", [("phone", "+49 30 1234567")]),
    ("DE (030) 1234567", [("phone", "(030) 1234567")]),
    ("FR +33 1 23 45 67 89", [("phone", "+33 1 23 45 67 89")]),
    ("FR 01 23 45 67 89", [("phone", "01 23 45 67 89")]),
    ("IN +91 98765 43210", [("phone", "+91 98765 43210")]),
    ("JP +81-3-1234-5678", [("phone", "+81-3-1234-5678")]),
    ("E.164 +14155550132", [("phone", "+14155550132")]),
    ("card 4111 1111 1111 1111 exp 12/27", [("card", "4111 1111 1111 1111")]),
    ("card 4111-1111-1111-1111", [("card", "4111-1111-1111-1111")]),
    ("mc 5500005555555559", [("card", "5500005555555559")]),
    ("amex 3782 822463 10005", [("card", "3782 822463 10005")]),
    ("visa 4222222222222", [("card", "4222222222222")]),
    ("iban DE89 3704 0044 0532 0130 00 ok", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("iban GB82WEST12345698765432", [("iban", "GB82WEST12345698765432")]),
    ("iban FR1420041010050500013M02606", [("iban", "FR1420041010050500013M02606")]),
    ("iban NO9386011117947", [("iban", "NO9386011117947")]),
    ("ssn 536-22-8416", [("national_id", "536-22-8416")]),
    ("nino AB 12 34 56 C", [("national_id", "AB 12 34 56 C")]),
    ("nino AB123456C", [("national_id", "AB123456C")]),
    ("dni 12345678Z", [("national_id", "12345678Z")]),
    ("nie X-1234567-L", [("national_id", "X-1234567-L")]),
    (f"key {OPENAI_KEY}", [("api_key", OPENAI_KEY)]),
    (
        "key sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe",
        [("api_key", "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe")],
    ),
    ("aws AKIAIOSFODNN7EXAMPLE", [("api_key", "AKIAIOSFODNN7EXAMPLE")]),
    (
        "gh ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        [("api_key", "ghp_16C7e42F292c6912E7710c838347Ae178B4a")],
    ),
    (
        "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        [("api_key", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx")],
    ),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", [("api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")]),
    (
        "google AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
        [("api_key", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW")],
    ),
    ("api_key=a1b2c3d4e5f6g7h8", [("api_key", "a1b2c3d4e5f6g7h8")]),
    ("OPENAI_API_KEY='abc def'", [("api_key", "abc def")]),
    ("X-Api-Key: zz9-plural-z-alpha", [("api_key", "zz9-plural-z-alpha")]),
    ("Authorization: Bearer abcDEF123ghiJKL456mno", [("api_key", "abcDEF123ghiJKL456mno")]),
    ("Authorization: Basic dXNlcjpwYXNz", [("api_key", "dXNlcjpwYXNz")]),
    ("client_secret: 9f8e7d6c", [("api_key", "9f8e7d6c")]),
    ("?access_token=tok123&page=2", [("api_key", "tok123")]),
    ("password=hunter2!", [("password", "hunter2!")]),
    ("DB_PASSWORD: Tr0ub4dor&3", [("password", "Tr0ub4dor")]),
    ('{"user": "bob", "password": "s3cr3t pass"}', [("password", "s3cr3t pass")]),
    ('{"passwd":"a\\"b"}', [("password", 'a\\"b')]),
    ("dsn postgresql://app:Tr0ub4dor@db.internal:5432/x", [("password", "Tr0ub4dor")]),
    (f"token {JWT}", [("jwt", JWT)]),
    (f"key:\n{PEM}\nend", [("private_key", PEM)]),
]

NEGATIVES = [
    "order A-1002 shipped",
    "Order #100234 and INV-2026-0042",
    "on 2026-11-23 at 12:30:45",
    "on 2026-11-23 12:30, 2026-11-23T12:30:45.123Z",
    "due 23/11/2026 or 11.23.2026 or 01-02-2026 10:00",
    "total $1,250.00 (1,250,000 units), €1.234.567,89",
    "version 1.2.3, v2.14.3, 10.0.19045, build 2026.11.23.1",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "at 1732363200000 ms, epoch 1732363200",
    "host 192.168.1.10:8080 and 10.0.0.1",
    "sha e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "run 01J9Z3K5QW8E7R6T5Y4U3I2O1P step 3/10",
    "latency p99 123.45 ms, cost 0.0012, 42%",
    "tracking 1Z999AA10123456784",
    "sku SKU-48213-XL qty 12 x 4.99",
    "@dataclass decorator, user@localhost, @mention",
    "tokens: 1234, max_tokens=4096, input_tokens 812",
    "the password reset link was sent; passwords must be long",
    "sk-learn is not a key; ask-me-anything",
    "phone ext. 12 or tel 12",
    "PO-2026-000123-45",
    "ranges 100-200-3000",
]


def spans(redactor: Redactor, text: str) -> list[tuple[str, str]]:
    return [(found.kind, text[found.start : found.end]) for found in redactor.find(text)]


@pytest.mark.parametrize(("text", "expected"), POSITIVES)
def test_each_kind_is_found(text: str, expected: list[tuple[str, str]]) -> None:
    """Every positive is found with its kind and exactly its span."""
    assert spans(Redactor(), text) == expected


@pytest.mark.parametrize(("text", "expected"), POSITIVES)
def test_redact_replaces_the_span_with_the_mask(text: str, expected: list[tuple[str, str]]) -> None:
    """The secret part is gone from the redacted text and the kind's mask stands in its place."""
    kind, secret = expected[0]
    redacted = Redactor().redact(text)
    assert secret not in redacted
    assert f"[{kind}]" in redacted


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_kept(text: str) -> None:
    """Order ids, dates, times, prices, versions, UUIDs, hashes, IPs and counters are not masked."""
    assert Redactor().find(text) == []
    assert Redactor().redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "card 4111 1111 1111 111",  # too short for its grouping
        "iban DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "iban DE89 3704 0044 0532 0130 0",  # wrong length for DE
        "iban ZZ89 3704 0044 0532 0130 00",  # no such country
        "ssn 000-12-3456, 666-12-3456, 912-12-3456, 123-00-4567, 123-45-0000",
        "nino GB 12 34 56 A, QQ 12 34 56 C",  # reserved / invalid prefixes
        "dni 12345678A",  # wrong check letter
        "+12 3",  # too few digits for a phone
    ],
)
def test_checksums_and_structure_reject_near_misses(text: str) -> None:
    """Numbers of the right shape but a wrong checksum, length or prefix are kept."""
    assert Redactor().find(text) == []


def test_find_reports_sorted_spans() -> None:
    """find returns each span once, in order of position."""
    text = "mail a@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111"
    found = Redactor().find(text)
    assert [item.kind for item in found] == ["email", "phone", "card"]
    assert found == sorted(found, key=lambda item: item.start)
    assert isinstance(found[0], Finding)


def test_overlapping_findings_merge_into_one_span() -> None:
    """A labelled password that is also a card number is masked whole, under the label's kind."""
    text = "password=4111 1111 1111 1111 ok"
    assert Redactor().redact(text) == "password=[password] ok"


def test_url_credentials_are_a_password_not_an_address() -> None:
    """In scheme://user:password@host only the password goes; the host stays readable."""
    redacted = Redactor().redact("postgresql://app:Tr0ub4dor@db.example.com:5432/x")
    assert redacted == "postgresql://app:[password]@db.example.com:5432/x"


def test_labels_are_case_insensitive() -> None:
    """PASSWORD=, Password: and password= are all labels."""
    redactor = Redactor()
    assert redactor.redact("PASSWORD=abc Password: def") == "PASSWORD=[password] Password: [password]"


def test_text_whose_lower_case_is_longer_keeps_offsets() -> None:
    """A character that lower-cases to two (İ) does not shift where masks land."""
    text = "İstanbul password=hunter2 mail a@example.com"
    assert Redactor().redact(text) == "İstanbul password=[password] mail [email]"


def test_kinds_limit_what_is_masked() -> None:
    """A redactor for e-mail only leaves phones and cards alone."""
    text = "a@example.com +44 20 7946 0958 4111 1111 1111 1111"
    assert Redactor(kinds={"email"}).redact(text) == "[email] +44 20 7946 0958 4111 1111 1111 1111"
    assert Redactor(kinds=()).redact(text) == text


def test_unknown_kinds_are_refused() -> None:
    """A misspelt kind is a configuration error, not a silently disabled redaction."""
    with pytest.raises(ConfigurationError, match="emial"):
        Redactor(kinds={"emial"})


@pytest.mark.parametrize(("mask", "expected"), [("<{kind}>", "mail <email>"), ("***", "mail ***")])
def test_mask_is_a_template(mask: str, expected: str) -> None:
    """`{kind}` in the mask becomes the kind; a mask without it is used as is."""
    assert Redactor(mask=mask).redact("mail jane@example.com") == expected


def test_allow_list_keeps_named_values() -> None:
    """Values on the allow list (any case) stay; others of the same kind go."""
    redactor = Redactor(allow={"Support@Acme.example"})
    text = "write to support@acme.example or jane@example.com"
    assert redactor.redact(text) == "write to support@acme.example or [email]"
    assert redactor.redact_json({"password": "support@acme.example"}) == {"password": "support@acme.example"}


FRAGMENTS = [text for text, _ in POSITIVES] + NEGATIVES
FRAGMENTS += ["-----BEGIN PRIVATE KEY-----\nMIIE", " ", "\n", "=", ":", '"', "-", "0", "+", "@", "[email]"]


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=20), max_size=8).map("".join))
def test_redacting_twice_equals_redacting_once(text: str) -> None:
    """Masks are never found again, so redaction is idempotent on text and on JSON."""
    redactor = Redactor()
    once = redactor.redact(text)
    assert redactor.redact(once) == once
    payload: JsonValue = {"text": text, "password": text, "items": [text]}
    once_json = redactor.redact_json(payload)
    assert redactor.redact_json(once_json) == once_json


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=6))
def test_json_strings_are_redacted_as_each_alone(strings: list[str]) -> None:
    """Scanning a payload's strings joined gives what scanning each string alone gives."""
    redactor = Redactor()
    assert redactor.redact_json(list(strings)) == [redactor.redact(text) for text in strings]


def test_redact_json_walks_dicts_and_lists() -> None:
    """Strings at any depth are redacted; numbers, booleans, None and keys are kept."""
    payload: dict[str, Any] = {
        "messages": [{"role": "user", "content": "I am jane@example.com, card 4111 1111 1111 1111"}],
        "usage": {"input_tokens": 812, "output_tokens": 64, "cost_usd": 0.00042},
        "ok": True,
        "note": None,
        "jane@example.com": 1,
    }
    out = Redactor().redact_json(payload)
    assert out == {
        "messages": [{"role": "user", "content": "I am [email], card [card]"}],
        "usage": {"input_tokens": 812, "output_tokens": 64, "cost_usd": 0.00042},
        "ok": True,
        "note": None,
        "jane@example.com": 1,
    }


def test_values_under_secret_keys_are_masked_whole() -> None:
    """password, api_key, tokens, authorization, cookies and credentials are masked whatever they hold."""
    payload: dict[str, Any] = {
        "user": "bob",
        "password": "correct horse battery staple",
        "DB-Password": "x",
        "pin_password": 1234,
        "apiKey": "not-a-known-format",
        "access_token": "opaque",
        "headers": {"Authorization": "Bearer abc", "Cookie": "session=1", "X-Request-Id": "r-1"},
        "credentials": {"user": "bob", "secret": ["a", "b"]},
        "cvv": "123",
        "empty_password": "",
    }
    out = Redactor().redact_json(payload)
    assert out == {
        "user": "bob",
        "password": "[password]",
        "DB-Password": "[password]",
        "pin_password": "[password]",
        "apiKey": "[api_key]",
        "access_token": "[api_key]",
        "headers": {"Authorization": "[api_key]", "Cookie": "[api_key]", "X-Request-Id": "r-1"},
        "credentials": {"user": "[api_key]", "secret": ["[api_key]", "[api_key]"]},
        "cvv": "[card]",
        "empty_password": "",
    }


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("password", "password"),
        ("DB_Password", "password"),
        ("pwd", "password"),
        ("x-api-key", "api_key"),
        ("OPENAI_API_KEY", "api_key"),
        ("refresh_token", "api_key"),
        ("client_secret", "api_key"),
        ("authorization", "api_key"),
        ("private_key", "private_key"),
        ("ssn", "national_id"),
        ("max_tokens", None),
        ("input_tokens", None),
        ("idempotency_key", None),
        ("session_id", None),
        ("tokenizer", None),
        ("name", None),
    ],
)
def test_secret_key_names(key: str, kind: str | None) -> None:
    """Keys name secrets by suffix; counters and ids that merely contain the words do not."""
    assert secret_key_kind(key) == kind


def test_secret_keys_follow_the_enabled_kinds() -> None:
    """With passwords off, a password key is walked like any other key."""
    out = Redactor(kinds={"email"}).redact_json({"password": "jane@example.com"})
    assert out == {"password": "[email]"}


def test_clean_payload_comes_back_as_the_same_object() -> None:
    """Nothing to mask: no copy is made."""
    payload: dict[str, Any] = {"content": "Order A-1002 ships on 2026-11-23", "usage": {"input_tokens": 3}}
    assert Redactor().redact_json(payload) is payload


def test_redact_json_does_not_mutate_its_input() -> None:
    """The input is left as it was; unchanged branches are shared, changed ones copied."""
    payload: dict[str, Any] = {"a": {"content": "mail jane@example.com"}, "b": {"content": "nothing"}}
    before = copy.deepcopy(payload)
    out = Redactor().redact_json(payload)
    assert payload == before
    assert isinstance(out, dict)
    assert out["a"] == {"content": "mail [email]"}
    assert out["b"] is payload["b"]


def test_unterminated_private_key_masks_to_the_end() -> None:
    """A key cut short (no END line) is masked from its BEGIN line to the end of the text."""
    text = "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA (cut)"
    assert Redactor().redact(text) == "key: [private_key]"


def test_unterminated_private_key_masks_to_the_end_of_its_string() -> None:
    """A key cut short is masked to the end of its own string, not into the payload's next strings."""
    out = Redactor().redact_json(["before", "-----BEGIN PRIVATE KEY-----\nMIIE", "after a@example.com"])
    assert out == ["before", "[private_key]", "after [email]"]


def test_policy_picks_the_tenants_redactor() -> None:
    """per_tenant overrides the default; None switches redaction off for that tenant."""
    email_only = Redactor(kinds={"email"})
    policy = RedactionPolicy(default=Redactor(), per_tenant={"acme": email_only, "lab": None})
    text = "jane@example.com 4111 1111 1111 1111"
    assert policy.for_tenant("acme") is email_only
    assert policy.for_tenant("acme").redact(text) == "[email] 4111 1111 1111 1111"
    assert policy.for_tenant("globex").redact(text) == "[email] [card]"
    assert policy.for_tenant(None).redact(text) == "[email] [card]"
    assert policy.for_tenant("lab").redact(text) == text


def test_policy_default_none_redacts_nothing_unless_listed() -> None:
    """With default=None only the listed tenants are redacted."""
    policy = RedactionPolicy(default=None, per_tenant={"acme": Redactor()})
    assert policy.for_tenant("other").redact("jane@example.com") == "jane@example.com"
    assert policy.for_tenant("acme").redact("jane@example.com") == "[email]"
    assert policy.for_tenant(None).kinds == frozenset()


def test_default_policy_redacts_every_kind() -> None:
    """RedactionPolicy() redacts everything for everyone."""
    assert RedactionPolicy().for_tenant("any").kinds == KINDS


def test_redaction_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """No lookup and no connection while finding every kind (conftest only guards connect)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use during redaction: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    redactor = Redactor()
    for text, expected in POSITIVES:
        assert redactor.find(text), text
        assert redactor.redact_json({"text": text}) != {"text": text}, expected


def test_module_imports_only_the_standard_library_and_tether() -> None:
    """No third-party import (Presidio's tldextract fetches the public suffix list on first use)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(redaction_module.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"tether"}
