"""Settings from a directory of files, one per variable: how a pod reads secrets mounted by the CSI driver.

`VOICELOG_SECRETS_DIR` names a directory whose files are named like the environment variables they stand for
(`VOICELOG_DATABASE_URL`, `VOICELOG_AUDIT__SIGNING_KEY`, ...) and hold their values. They are read exactly as
those variables would be, nested names included, so a secret never has to be copied into a Kubernetes Secret
(etcd) or into the process environment (`/proc/<pid>/environ`, crash reports). A variable set in the
environment wins over a file of the same name. Other names are ignored: the CSI driver keeps its own entries
(`..data`, dot-files) beside the secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic_settings import BaseSettings, EnvSettingsSource

SECRETS_DIR_VARIABLE = "VOICELOG_SECRETS_DIR"
PREFIX = "VOICELOG_"
MAX_FILE_BYTES = 1024 * 1024  # far above any key, token or URL: a larger file is a mistake, not a secret


class SecretsDirError(ValueError):
    """The secrets directory is missing, unreadable or holds an unusable file; the message names the file,
    never its content."""


def read_secret_files(directory: Path) -> dict[str, str]:
    """`{variable name: value}` for each `VOICELOG_*` regular file (symlinks followed, as the CSI driver links
    them); one trailing newline is dropped, as `echo` and editors add it."""
    if not directory.is_dir():
        raise SecretsDirError(f"{SECRETS_DIR_VARIABLE}={directory} is not a directory")
    values: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise SecretsDirError(f"{SECRETS_DIR_VARIABLE}={directory} cannot be listed: {exc.strerror}") from None
    for entry in entries:
        if not entry.name.upper().startswith(PREFIX) or not entry.is_file():
            continue
        path = Path(entry.path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise SecretsDirError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
            text = path.read_bytes().decode()
        except OSError as exc:
            raise SecretsDirError(f"{path} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretsDirError(f"{path} is not UTF-8 text") from None
        values[entry.name] = text.removesuffix("\n").removesuffix("\r")
    return values


class SecretFilesSource(EnvSettingsSource):
    """The files of `VOICELOG_SECRETS_DIR`, parsed as the environment is (prefix, `__` nesting, JSON values)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        directory = os.environ.get(SECRETS_DIR_VARIABLE)
        if not directory:
            return {}
        values: dict[str, str | None] = {}
        for name, value in read_secret_files(Path(directory)).items():
            if self.env_ignore_empty and value == "":
                continue
            none = self.env_parse_none_str is not None and value == self.env_parse_none_str
            values[name if self.case_sensitive else name.lower()] = None if none else value
        return values
