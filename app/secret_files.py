"""Settings from a directory of files, one per variable: how a pod reads secrets mounted by the CSI driver.

`VOICELOG_SECRETS_DIR` names a directory whose files are named like the environment variables they stand for
(`VOICELOG_DATABASE_URL`, `VOICELOG_AUDIT__SIGNING_KEY`, ...) and hold their values. They are read exactly as
those variables would be, nested names included, so a secret never has to be copied into a Kubernetes Secret
(etcd) or into the process environment (`/proc/<pid>/environ`, crash reports). A variable set in the
environment wins over a file of the same name. Names not starting with `VOICELOG_` are ignored (the CSI driver
keeps its own entries, `..data` and dot-files, beside the secrets); a `VOICELOG_*` entry that names no setting,
is not a readable file inside the directory, or is too large stops the start: a misspelt or missing secret
must never leave a setting at its default (an audit key made in the pod instead of the configured one, C6).
The files are read once, when the settings are built (each worker process at its start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import EnvSettingsSource

SECRETS_DIR_VARIABLE = "VOICELOG_SECRETS_DIR"
PREFIX = "VOICELOG_"
NESTED = "__"
MAX_FILE_BYTES = 1024 * 1024  # far above any key, token or URL: a larger file is a mistake, not a secret


class SecretsDirError(ValueError):
    """The secrets directory is missing, unreadable or holds an unusable entry; the message names the entry,
    never its content."""


def read_secret_files(directory: Path) -> dict[str, str]:
    """`{variable name: value}` for each `VOICELOG_*` entry: a regular file, or a symlink to one inside the
    directory (as the CSI driver links them into `..data`); one trailing newline is dropped, as `echo` and
    editors add it."""
    if not directory.is_dir():
        raise SecretsDirError(f"{SECRETS_DIR_VARIABLE}={directory} is not a directory")
    root = directory.resolve()
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.name.upper().startswith(PREFIX))
    except OSError as exc:
        raise SecretsDirError(f"{SECRETS_DIR_VARIABLE}={directory} cannot be listed: {exc.strerror}") from None
    values: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        if (other := seen.setdefault(name.upper(), name)) != name:
            raise SecretsDirError(f"{directory}: {other} and {name} name the same setting")
        values[name] = _read_one(directory / name, root)
    return values


def _read_one(path: Path, root: Path) -> str:
    target = path.resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise SecretsDirError(f"{path} is not a readable file inside the secrets directory")
    try:
        with target.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretsDirError(f"{path} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SecretsDirError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SecretsDirError(f"{path} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


def names_a_setting(settings_cls: type[BaseModel], name: str) -> bool:
    """Does `VOICELOG_<FIELD>` or `VOICELOG_<FIELD>__<SUBFIELD>...` name a field of `settings_cls`?"""
    parts = name[len(PREFIX):].lower().split(NESTED)
    model: type[BaseModel] | None = settings_cls
    for part in parts:
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


class SecretFilesSource(EnvSettingsSource):
    """The files of `VOICELOG_SECRETS_DIR`, parsed as the environment is (prefix, `__` nesting, JSON values).

    It reuses pydantic-settings' parsing by overriding `_load_env_vars`, which `EnvSettingsSource.__init__` calls
    for the variables to parse. That method is not public API: a pydantic-settings that stopped calling it would
    parse the environment here instead and silently leave every secret at its default, so with a secrets directory
    named, a source built without having read it stops the start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._files_read = False
        super().__init__(*args, **kwargs)
        if os.environ.get(SECRETS_DIR_VARIABLE) and not self._files_read:
            raise SecretsDirError(f"{SECRETS_DIR_VARIABLE} is set but this pydantic-settings did not ask for the "
                                  "variables through `_load_env_vars`: the secrets would be ignored")

    def _load_env_vars(self) -> Mapping[str, str | None]:
        self._files_read = True
        named = os.environ.get(SECRETS_DIR_VARIABLE)
        if not named:
            return {}
        directory = Path(named)
        values: dict[str, str | None] = {}
        for name, value in read_secret_files(directory).items():
            if not names_a_setting(self.settings_cls, name):
                raise SecretsDirError(f"{directory / name} names no setting")
            if self.env_ignore_empty and value == "":
                continue
            none = self.env_parse_none_str is not None and value == self.env_parse_none_str
            values[name if self.case_sensitive else name.lower()] = None if none else value
        return values
