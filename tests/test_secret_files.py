"""Settings read from a secrets directory (`VOICELOG_SECRETS_DIR`), as the CSI driver mounts Key Vault secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from app.config import Settings
from app.secret_files import MAX_FILE_BYTES, SecretFilesSource, SecretsDirError

MAC_KEY = base64.b64encode(b"k" * 32).decode()


def csi_mount(root: Path, files: dict[str, str]) -> Path:
    """The layout the Secrets Store CSI driver writes: the files in a timestamped directory behind `..data`,
    and one symlink per object alias."""
    stamp = root / "..2026_12_06_04_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, value in files.items():
        (stamp / name).write_text(value)
    (root / "..data").symlink_to(stamp.name)
    for name in files:
        (root / name).symlink_to(Path("..data") / name)
    return root


def test_flat_and_nested_settings_come_from_files_named_like_their_variables(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    retired = json.dumps([{"key": base64.b64encode(b"r" * 32).decode(), "last_seq": 41}])
    mount = csi_mount(tmp_path / "secrets", {
        "VOICELOG_DATABASE_URL": "postgresql+asyncpg://voicelog_app:pw@db:5432/voicelog?ssl=require\n",
        "VOICELOG_ADMIN_TOKEN": "admin-token-from-the-vault",
        "VOICELOG_AUDIT__ENTRY_MAC_KEY": MAC_KEY + "\n",
        "VOICELOG_AUDIT__RETIRED_ENTRY_MAC_KEYS": retired,
        "README": "not a setting",
    })
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(mount))
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://voicelog_app:pw@db:5432/voicelog?ssl=require"
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "admin-token-from-the-vault"
    assert settings.audit.entry_mac_key is not None
    assert settings.audit.entry_mac_key.get_secret_value() == MAC_KEY  # the trailing newline dropped
    assert [k.last_seq for k in settings.audit.retired_entry_mac_keys] == [41]
    assert settings.secrets_dir == mount


def test_a_variable_in_the_environment_wins_over_its_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    (tmp_path / "VOICELOG_ADMIN_TOKEN").write_text("from-the-file")
    (tmp_path / "VOICELOG_AUDIT__CHECKPOINT_EVERY_ENTRIES").write_text("77")
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(tmp_path))
    clean_env.setenv("VOICELOG_ADMIN_TOKEN", "from-the-environment")
    settings = Settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-the-environment"
    assert settings.audit.checkpoint_every_entries == 77  # the file still counts where nothing overrides it


def test_without_a_secrets_dir_nothing_is_read_from_files(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    (tmp_path / "VOICELOG_ADMIN_TOKEN").write_text("never-read")
    clean_env.chdir(tmp_path)
    assert Settings().admin_token is None


@pytest.mark.parametrize("problem", ["missing", "a_file", "not_utf8", "too_large"])
def test_an_unusable_secrets_dir_stops_start_up_naming_the_file_never_its_content(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, problem: str
) -> None:
    directory = tmp_path / "secrets"
    secret = b"s3cr3t-\xff-value" if problem == "not_utf8" else b"s3cr3t" * (MAX_FILE_BYTES // 6 + 1)
    if problem == "a_file":
        directory.write_text("s3cr3t")
    elif problem in ("not_utf8", "too_large"):
        directory.mkdir()
        (directory / "VOICELOG_ADMIN_TOKEN").write_bytes(secret)
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(directory))
    with pytest.raises(SecretsDirError) as caught:
        Settings()
    message = str(caught.value)
    assert str(directory) in message
    assert "s3cr3t" not in message
    if problem in ("not_utf8", "too_large"):
        assert "VOICELOG_ADMIN_TOKEN" in message


def test_a_value_that_fails_validation_is_named_never_echoed(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """A secret written into the wrong file (here the port's) must not reach the start-up error and the logs."""
    (tmp_path / "VOICELOG_PORT").write_text("s3cr3t-token")
    (tmp_path / "VOICELOG_AUDIT__CHECKPOINT_EVERY_ENTRIES").write_text("s3cr3t-key")
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = str(caught.value)
    assert "port" in message
    assert "audit.checkpoint_every_entries" in message
    assert "s3cr3t" not in message


def test_an_entry_that_names_no_setting_stops_start_up(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """A misspelt alias must not leave its setting at the default (an audit key made in the pod instead)."""
    (tmp_path / "VOICELOG_AUDIT__ENTRY_MAC_KEYS").write_text(MAC_KEY)
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(tmp_path))
    with pytest.raises(SecretsDirError, match="VOICELOG_AUDIT__ENTRY_MAC_KEYS names no setting"):
        Settings()


def test_a_pydantic_settings_that_stops_asking_for_the_variables_stops_start_up_instead_of_ignoring_secrets(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The files are read through pydantic-settings' non-public `_load_env_vars`. An upgrade that no longer calls
    it would otherwise leave every secret at its default without a word; with a secrets directory named, the
    start stops. Without one nothing is lost, and settings build as before."""
    (tmp_path / "VOICELOG_ADMIN_TOKEN").write_text("from-the-file")
    original = EnvSettingsSource.__init__

    def init_without_the_hook(self: EnvSettingsSource, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if isinstance(self, SecretFilesSource):  # what a release that loads variables some other way would do
            self._files_read = False
            self.env_vars = {}

    clean_env.setattr(EnvSettingsSource, "__init__", init_without_the_hook)
    assert Settings().admin_token is None  # no secrets directory: nothing to ignore
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(tmp_path))
    with pytest.raises(SecretsDirError, match="secrets would be ignored"):
        Settings()


@pytest.mark.parametrize("problem", ["broken_link", "link_outside", "directory", "same_name_twice"])
def test_an_entry_that_is_not_a_file_of_the_directory_stops_start_up(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, problem: str
) -> None:
    """What a missing CSI object or a planted link looks like: never silently skipped, never read from elsewhere."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    outside = tmp_path / "elsewhere"
    outside.write_text("s3cr3t")
    entry = directory / "VOICELOG_ADMIN_TOKEN"
    if problem == "broken_link":
        entry.symlink_to("..data/VOICELOG_ADMIN_TOKEN")
    elif problem == "link_outside":
        entry.symlink_to(outside)
    elif problem == "directory":
        entry.mkdir()
    else:
        entry.write_text("one")
        (directory / "voicelog_admin_token").write_text("two")
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(directory))
    with pytest.raises(SecretsDirError) as caught:
        Settings()
    assert "VOICELOG_ADMIN_TOKEN" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
