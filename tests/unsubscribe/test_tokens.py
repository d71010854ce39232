"""Signed tokens, their URLs, and the generated secret key."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from crm_notify.config import load_settings
from crm_notify.errors import ConfigurationError
from crm_notify.unsubscribe.tokens import (
    UnsubscribeToken,
    UnsubscribeTokenError,
    load_secret_key,
    make_token,
    preferences_url,
    read_token,
    unsubscribe_url,
)
from tests.unsubscribe.conftest import SECRET


def test_token_round_trip_binds_contact_purpose_and_notification() -> None:
    token = make_token(SECRET, contact_id=123456, purpose="marketing", notification_id=987)
    assert read_token(SECRET, token) == UnsubscribeToken(123456, "marketing", 987)
    bare = make_token(SECRET, contact_id=7, purpose="surveys")
    assert read_token(SECRET, bare) == UnsubscribeToken(7, "surveys", None)
    # Short enough for a List-Unsubscribe URL on one folded header line
    assert len(token) <= 48


@pytest.mark.parametrize(
    "alter",
    [
        lambda t: t.replace("1e240", "1e241", 1),  # another contact
        lambda t: t.replace("marketing", "surveys", 1),  # another purpose
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # another signature
        lambda t: t.rpartition(".")[0],  # no signature
        lambda t: "",
        lambda t: "x.y.z.w",
        lambda t: t + "é",
    ],
)
def test_altered_or_malformed_tokens_are_refused(alter) -> None:  # type: ignore[no-untyped-def]
    token = make_token(SECRET, contact_id=123456, purpose="marketing", notification_id=1)
    with pytest.raises(UnsubscribeTokenError):
        read_token(SECRET, alter(token))


def test_token_signed_with_another_key_is_refused() -> None:
    token = make_token(b"another key, 32 characters long!", contact_id=1, purpose="marketing")
    with pytest.raises(UnsubscribeTokenError, match="signature"):
        read_token(SECRET, token)


def test_urls_sit_under_the_public_base_url() -> None:
    assert unsubscribe_url("https://n.example/", "T") == "https://n.example/unsubscribe/T"
    assert preferences_url("https://n.example", "T") == "https://n.example/preferences/T"


def test_configured_secret_key_is_used(tmp_path: Path) -> None:
    settings = load_settings(None, var_dir=tmp_path, secret_key="k" * 40)
    assert load_secret_key(settings) == b"k" * 40
    assert not (tmp_path / "secret_key").exists()


def test_generated_key_is_created_once_private_and_shared(tmp_path: Path) -> None:
    # Given no configured key, When several threads load it at once
    settings = load_settings(None, var_dir=tmp_path / "var")
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_secret_key(settings))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then they all get the one key written to VAR_DIR/secret_key, readable by its owner only
    path = tmp_path / "var" / "secret_key"
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret_key(settings) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]


def test_an_unusable_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("short\n")
    with pytest.raises(ConfigurationError, match="secret_key"):
        load_secret_key(load_settings(None, var_dir=tmp_path))
