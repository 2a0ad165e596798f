"""Import boundaries (issue 16): the relay loads no people or audit code, settings are leaves, packages are
empty doors. Each check imports in a fresh interpreter, so what other tests loaded cannot hide an edge."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_THE_RELAY = ("app.access", "app.audit", "app.identity", "app.tickets", "app.console")
# What app.config may load besides settings modules and packages: itself, the regions, and the source that
# reads settings from the secrets directory (a leaf: it imports no other app module, checked below).
BASE = {"app", "app.config", "app.regions", "app.secret_files"}


def loaded_after(code: str) -> list[str]:
    """The `app` modules in `sys.modules` after running `code` in a fresh interpreter at the repository root."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'app')))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120)
    names: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return names


def parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_the_relay_loads_no_access_audit_identity_tickets_or_console_module() -> None:
    loaded = loaded_after("import app.relay.routes")
    assert "app.relay.routes" in loaded
    assert [m for m in loaded if m.startswith(NOT_IN_THE_RELAY)] == []


def test_config_loads_settings_modules_and_their_packages_only() -> None:
    loaded = loaded_after("import app.config")
    settings = {m for m in loaded if m.endswith(".settings")}
    allowed = BASE | settings | {p for m in settings for p in parents(m)}
    assert "app.config" in loaded
    assert sorted(set(loaded) - allowed) == []


def test_settings_modules_import_no_other_app_module() -> None:
    assert sorted(set(loaded_after("import app.secret_files")) - {"app", "app.secret_files"}) == []
    for path in sorted((ROOT / "app").rglob("settings.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        extra = set(loaded_after(f"import {module}")) - {module} - parents(module)
        assert sorted(extra) == [], module


def test_packages_re_export_nothing() -> None:
    """Importing a package runs its docstring only: importers name the defining module."""
    packages = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "app").rglob("__init__.py"))
    code = ("import importlib, sys\nout = {}\n"
            f"for name in {packages!r}:\n"
            "    before = set(sys.modules)\n"
            "    importlib.import_module(name)\n"
            "    out[name] = sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'app')\n"
            "print(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    news: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    extra = {name: [m for m in new if m != name and m not in parents(name)] for name, new in news.items()}
    assert {name: mods for name, mods in extra.items() if mods} == {}


def test_only_the_context_module_touches_app_state() -> None:
    """The typed context is the one way in (issue 16): no module reads or writes `app.state` but app/context.py,
    so mypy sees every part's type and no fallback guesses at what is there."""
    pattern = re.compile(r"\bapp\.state\b")
    touching = sorted(f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "app").rglob("*.py")
                      if path != ROOT / "app" / "context.py"
                      for number, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line))
    assert touching == []


def imported_modules(path: Path) -> set[str]:
    """Every `app` module `path` imports, at the top or inside a function (absolute imports, as the code writes)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update([node.module] if node.module != "app" else [f"app.{a.name}" for a in node.names])
    return {m for m in found if m.split(".")[0] == "app"}


def test_no_domain_module_but_a_cli_builds_the_context() -> None:
    """The context is built at the edges (create_app, the CLI, the worker): inside a domain package only its
    command-line module imports app.wiring; everything else is handed its parts (docs/ARCHITECTURE.md)."""
    builders = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "app").glob("*/**/*.py")
                      if "app.wiring" in imported_modules(path) and path.name != "cli.py")
    assert builders == []


def test_the_workflow_client_imports_nothing_of_app_but_itself() -> None:
    """`app/workflow/` speaks HTTP to the API only, so it runs where no database or key is."""
    outside = sorted(f"{path.relative_to(ROOT)}: {module}" for path in (ROOT / "app" / "workflow").rglob("*.py")
                     for module in imported_modules(path) if not module.startswith("app.workflow"))
    assert outside == []
