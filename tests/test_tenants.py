"""Who sent a request: a gateway's header, or a bearer token's keyed tag; never the token."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from metrics_proxy.families import TENANT_UNKNOWN
from metrics_proxy.tenants import KEY_PREFIX, KEY_TAG_LENGTH, TenantReader, key_tag

SALT = b"a salt of sixteen+ chars"
TOKEN = "sk-live-CANARY-0123456789"


def test_a_header_names_the_tenant() -> None:
    reader = TenantReader("X-Tenant")
    assert reader.read({"X-Tenant": "team-a"}) == "team-a"
    assert reader.read({"X-Tenant": "Team A/prod:eu"}) == "Team A/prod:eu"
    assert reader.read({}) == TENANT_UNKNOWN


@pytest.mark.parametrize(
    "value",
    ["", " ", " padded", "padded ", "x" * 65, "tab\there", "nl\nhere", "caf\u00e9", "\x7f"],
)
def test_a_header_that_names_no_tenant_is_unknown(value: str) -> None:
    assert TenantReader("X-Tenant").read({"X-Tenant": value}) == TENANT_UNKNOWN


def test_the_longest_name_is_kept_whole() -> None:
    assert TenantReader("X-Tenant").read({"X-Tenant": "x" * 64}) == "x" * 64


def test_a_key_tag_is_its_hmac_cut_short() -> None:
    tag = key_tag(SALT, TOKEN)
    expected = hmac.new(SALT, TOKEN.encode(), hashlib.sha256).hexdigest()[:KEY_TAG_LENGTH]
    assert tag == KEY_PREFIX + expected
    assert key_tag(SALT, TOKEN) == tag  # the same on every replica with the same salt
    assert key_tag(b"another salt, as long", TOKEN) != tag
    # Not a plain hash: without the salt, a guessed token cannot be checked against the tag.
    assert hashlib.sha256(TOKEN.encode()).hexdigest()[:KEY_TAG_LENGTH] not in tag
    assert TOKEN not in tag
    assert "CANARY" not in tag


def test_the_token_comes_from_a_bearer_authorization() -> None:
    reader = TenantReader(salt=SALT)
    tag = key_tag(SALT, TOKEN)
    assert reader.read({"Authorization": f"Bearer {TOKEN}"}) == tag
    assert reader.read({"Authorization": f"bearer  {TOKEN} "}) == tag
    assert reader.read({"Authorization": f"Basic {TOKEN}"}) == TENANT_UNKNOWN
    assert reader.read({"Authorization": "Bearer "}) == TENANT_UNKNOWN
    assert reader.read({}) == TENANT_UNKNOWN
    # A header value that is no UTF-8 reaches the proxy with surrogates: tagged, no error.
    assert reader.read({"Authorization": "Bearer \udcff"}).startswith(KEY_PREFIX)


def test_with_both_the_header_comes_first_and_the_key_stands_in() -> None:
    reader = TenantReader("X-Tenant", SALT)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert reader.read({"X-Tenant": "team-a", **bearer}) == "team-a"
    assert reader.read(bearer) == key_tag(SALT, TOKEN)
    assert reader.read({"X-Tenant": "\x01", **bearer}) == key_tag(SALT, TOKEN)


def test_a_header_cannot_pose_as_a_keys_tenant() -> None:
    """A name that reads like a key's tag is no gateway's: never taken from the header, so a
    client cannot count under (or use the slots of) a key it does not hold."""
    forged = key_tag(SALT, TOKEN)
    assert TenantReader("X-Tenant").read({"X-Tenant": forged}) == TENANT_UNKNOWN
    reader = TenantReader("X-Tenant", SALT)
    own = {"Authorization": "Bearer sk-someone-else"}
    assert reader.read({"X-Tenant": forged, **own}) == key_tag(SALT, "sk-someone-else")


def test_a_reader_needs_a_source() -> None:
    with pytest.raises(ValueError, match="needs a header, a salt"):
        TenantReader()
