"""Sealed webhook secrets: AES-256-GCM under WEBHOOK_SECRET_KEYS, bound to their row."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared import sealed
from shared.config import ConfigError, get_settings


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(sealed.KEYS_ENV, raising=False)
    monkeypatch.delenv("APP_ENV", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()  # no test after this one sees these settings


def test_a_sealed_secret_opens_only_in_its_own_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sealed.KEYS_ENV, sealed.new_key_list())
    value = sealed.seal("whsec_abc", context="row-1")
    assert value.startswith(sealed.PREFIX) and "whsec_abc" not in value
    assert sealed.seal("whsec_abc", context="row-1") != value  # a fresh nonce every time
    assert sealed.unseal(value, context="row-1") == "whsec_abc"
    with pytest.raises(sealed.Unsealable):
        sealed.unseal(value, context="row-2")


def test_a_tampered_value_does_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sealed.KEYS_ENV, sealed.new_key_list())
    value = sealed.seal("whsec_abc", context="row-1")
    middle = len(value) - 20  # inside the ciphertext (the last characters carry padding bits)
    flipped = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
    for bad in (flipped, value[:-8], sealed.PREFIX + "nokeyid"):
        with pytest.raises(sealed.Unsealable):
            sealed.unseal(bad, context="row-1")


def test_rotation_seals_with_the_new_key_and_still_opens_the_old(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old_list = sealed.new_key_list()
    monkeypatch.setenv(sealed.KEYS_ENV, old_list)
    old = sealed.seal("whsec_old", context="row-1")
    rotated = sealed.new_key_list(old_list)
    assert json.loads(rotated)[1:] == json.loads(old_list)
    monkeypatch.setenv(sealed.KEYS_ENV, rotated)
    new = sealed.seal("whsec_new", context="row-2")
    assert new.split(".")[2] != old.split(".")[2]  # named by a different key id
    assert sealed.unseal(old, context="row-1") == "whsec_old"
    monkeypatch.setenv(sealed.KEYS_ENV, json.dumps(json.loads(rotated)[:1]))  # old key dropped
    with pytest.raises(sealed.Unsealable, match="no configured key"):
        sealed.unseal(old, context="row-1")


def test_values_from_before_sealing_read_as_they_are() -> None:
    assert sealed.unseal("whsec_plain", context="row-1") == "whsec_plain"


def test_the_local_cloud_key_list_is_the_in_process_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    value = sealed.seal("whsec_abc", context="row-1")  # no keys configured: the local key
    monkeypatch.setenv(sealed.KEYS_ENV, sealed.local_key_list())
    assert sealed.unseal(value, context="row-1") == "whsec_abc"


@pytest.mark.parametrize("keys", ["not json", "[]", '["c2hvcnQ="]', '["%%%"]', "{}"])
def test_bad_key_lists_are_configuration_errors(monkeypatch: pytest.MonkeyPatch,
                                                keys: str) -> None:
    monkeypatch.setenv(sealed.KEYS_ENV, keys)
    with pytest.raises(ConfigError, match=sealed.KEYS_ENV):
        sealed.seal("x", context="row-1")


def test_production_has_no_local_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "prod")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="required in production"):
        sealed.seal("x", context="row-1")
