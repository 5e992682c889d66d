"""Every module the package imports is a declared dependency, and the lock pins every declared one.

The failure this guards against: mitmproxy 12.3 stopped pulling in ``zstandard``, which the package
imported without declaring; every fresh install then died at start-up while old environments kept
passing. (CI also runs deptry, which checks the same from the other side: nothing declared unused.)
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_TREES = (ROOT / "tokenpak_mitm", ROOT / "addons")
# Imported only by the optional OpenTelemetry exporter (the `otel` extra, installed by make run).
RUNTIME_EXTRAS = frozenset({"otel", "team"})  # the optional extras the proxy imports when asked (OTLP; PostgreSQL, metrics)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_imports(trees: tuple[Path, ...]) -> dict[str, set[str]]:
    """Top-level module name -> files importing it, for absolute imports outside the stdlib and the package."""
    found: dict[str, set[str]] = {}
    for tree in trees:
        for path in tree.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("tokenpak_mitm", "__future__"):
                        continue
                    found.setdefault(name if top == "backports" else top, set()).add(path.name)
    return found


def _declared(extras: frozenset[str]) -> set[str]:
    declared = set()
    for req in metadata.requires("tokenpak-mitm") or []:
        spec, _, marker = req.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) not in extras:
            continue
        match = _NAME.match(spec)
        assert match, req
        declared.add(_normalise(match.group(1)))
    return declared


def test_every_imported_module_is_a_declared_runtime_dependency() -> None:
    providers = metadata.packages_distributions()
    declared = _declared(RUNTIME_EXTRAS)
    problems = []
    for module, files in sorted(_top_level_imports(RUNTIME_TREES).items()):
        if module == "compression":  # stdlib from 3.14 (compression.zstd); guarded by a version check
            continue
        key = module.split(".")[0]
        dists = {_normalise(d) for d in providers.get(key, [])}
        if module.startswith("backports."):
            dists = {_normalise(module)}  # a namespace package: the distribution is named after the module
        if not dists:
            problems.append(f"{module} (in {', '.join(sorted(files))}) is imported but not installed by any declared dependency")
        elif not dists & declared:
            problems.append(f"{module} (in {', '.join(sorted(files))}) comes from {sorted(dists)}, none of which is declared")
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    """Control: the scanner sees a plain, a dotted and a from-import, and skips the stdlib."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("import zstandard\nimport json\nfrom yaml import safe_load\nimport backports.zstd\n")
    assert set(_top_level_imports((pkg,))) == {"zstandard", "yaml", "backports.zstd"}


def _pins(lock: Path) -> dict[str, str]:
    return {_normalise(m.group(1)): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", lock.read_text(), re.M)}


@pytest.mark.parametrize(("lock", "extras"), [("run.txt", frozenset({"otel"})), ("dev.txt", frozenset({"otel", "dev"}))])
def test_the_lock_pins_every_declared_dependency(lock: str, extras: frozenset[str]) -> None:
    pins = _pins(ROOT / "requirements" / lock)
    missing = sorted(_declared(extras) - set(pins) - {"tokenpak-mitm"})
    assert not missing, f"requirements/{lock} lacks {missing}: run `make lock`"
    assert all("--hash=sha256:" in block for block in (ROOT / "requirements" / lock).read_text().split("==")[1:])


def test_dev_lock_agrees_with_the_runtime_lock() -> None:
    """`make test` must test the versions `make run` installs."""
    run, dev = _pins(ROOT / "requirements" / "run.txt"), _pins(ROOT / "requirements" / "dev.txt")
    assert {name: dev.get(name) for name in run} == run
