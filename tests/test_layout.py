"""The package's structure rules, checked over whatever modules ``actorflow/`` holds now.

Modules are discovered from the file system (every ``*.py`` under ``actorflow/``, subpackages
included), never listed by hand, so modules that are added or moved are covered as they land.

* every module imports on its own, with no other actorflow module loaded before it, and
  without side effects at import time (starting Ray, threads, processes, sockets, file I/O,
  output, changes to ``os.environ`` or ``sys.path``);
* no module imports a private (``_``-prefixed, non-dunder) name from another module; a
  private *submodule* may be imported as a name only from inside its own package;
* no module is over ``MAX_MODULE_LINES`` lines, no function over ``MAX_FUNCTION_LINES``;
* the graph of import-time imports between actorflow modules is acyclic.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import os
import pathlib
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "actorflow"
PACKAGE_DIR = ROOT / PACKAGE

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# Documented exceptions to the private-import rule:
# (importing module, imported module, name) -> why it is allowed.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("actorflow.client", "ray.serve.context", "_get_global_client"): (
        "serve:// in HAProxy mode speaks HTTP to this node's ingress, and only Serve's client "
        "knows its port: Ray 2.60 has no public API for the running HTTP options"
    ),
}

# Environment variable that fixes the import order of test_every_module_imports_alone.
SEED_VARIABLE = "ACTORFLOW_LAYOUT_SEED"


# --- discovery ----------------------------------------------------------------------------


@functools.cache
def modules() -> dict[str, pathlib.Path]:
    """Every module of the package, by dotted name (packages by their ``__init__.py``)."""
    found: dict[str, pathlib.Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    assert PACKAGE in found, f"no {PACKAGE}/__init__.py under {ROOT}"
    return found


@functools.cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(name: str, line: int) -> str:
    return f"{modules()[name].relative_to(ROOT)}:{line}"


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def imported_base(importer: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from ... import`` statement imports from."""
    if not node.level:
        return node.module or ""
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def owning_module(name: str) -> str | None:
    """``name`` if it is an actorflow module, else its nearest enclosing actorflow module."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


# --- 1. every module imports alone ----------------------------------------------------------

# Runs in a fresh interpreter. Third-party modules that actorflow imports at import time are
# loaded first (so that what they do when first imported is not blamed on actorflow); then,
# for each actorflow module in the given order, every ``actorflow*`` entry is deleted from
# ``sys.modules`` and the module is imported on its own, watching for side effects. Global
# state that would carry from one module to the next (os.environ, sys.path, a Ray session) is
# reported and restored.
_IMPORT_ALONE = textwrap.dedent(
    r"""
    import contextlib, importlib, io, json, os, sys, threading, traceback

    config = json.load(open(sys.argv[1]))
    root, package = config["root"], config["package"]
    package_dir = os.path.join(root, package) + os.sep

    for name in config["preload"]:
        try:
            importlib.import_module(name)
        except BaseException:
            pass

    CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".so", ".pyd", ".pth")
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    WATCHED = (
        "socket.", "subprocess.", "os.system", "os.exec", "os.fork", "os.posix_spawn", "os.spawn",
        "os.kill", "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.truncate", "os.chmod",
        "os.chown", "os.link", "os.symlink", "os.utime", "shutil.", "sqlite3.connect",
        "http.client.", "urllib.", "smtplib.", "ftplib.", "webbrowser.", "pty.",
    )
    # uname(2), no network and no file: not I/O (its value is the same in every process of a host)
    NOT_IO = {"socket.gethostname"}
    events = []
    watching = [False]

    def culprit():
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(package_dir):
                return f"{os.path.relpath(frame.f_code.co_filename, root)}:{frame.f_lineno}"
            frame = frame.f_back
        return "?"

    def hook(event, args):
        if not watching[0]:
            return
        watching[0] = False
        try:
            if event == "open":
                path, mode, flags = args
                if not isinstance(path, (str, bytes, os.PathLike)):
                    return
                path = os.fsdecode(path)
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                    (flags or 0) & WRITE_FLAGS)
                if not writes and (path.endswith(CODE_SUFFIXES) or "__pycache__" in path):
                    return
                events.append(f"open({path!r}, {'write' if writes else 'read'}) at {culprit()}")
            elif event.startswith(WATCHED) and event not in NOT_IO:
                events.append(f"{event}{tuple(args)!r:.200} at {culprit()}")
        finally:
            watching[0] = True

    sys.addaudithook(hook)

    def ray_running():
        ray = sys.modules.get("ray")
        return ray is not None and getattr(ray, "is_initialized", lambda: False)()

    results = []
    for name in config["modules"]:
        with open(config["progress"], "w") as progress:
            progress.write(name)
        for loaded in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[loaded]
        importlib.invalidate_caches()
        environ, path = dict(os.environ), list(sys.path)
        threads = {t.ident for t in threading.enumerate()}
        ray_before = ray_running()
        out, err = io.StringIO(), io.StringIO()
        error = None
        del events[:]
        watching[0] = True
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                module = importlib.import_module(name)
        except BaseException:
            error = traceback.format_exc()
        finally:
            watching[0] = False
        effects = []
        if error is None and not os.path.abspath(module.__file__).startswith(package_dir):
            error = f"imported {module.__file__}, not the module under {package_dir}"
        if ray_running() and not ray_before:
            effects.append("starts Ray (ray.is_initialized() is True afterwards)")
            sys.modules["ray"].shutdown()
        started = [t.name for t in threading.enumerate() if t.ident not in threads]
        if started:
            effects.append(f"starts threads {started}")
        for stream, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())):
            if text:
                effects.append(f"writes to {stream}: {text[:500]!r}")
        changed = sorted(k for k in {*environ, *os.environ} if environ.get(k) != os.environ.get(k))
        if changed:
            effects.append(f"changes os.environ {changed}")
            os.environ.clear()
            os.environ.update(environ)
        if sys.path != path:
            effects.append(f"changes sys.path: {path} -> {sys.path}")
            sys.path[:] = path
        operations = list(dict.fromkeys(events))
        if len(operations) > 12:
            operations[12:] = [f"... and {len(operations) - 12} more file, process or socket operations"]
        effects.extend(operations)
        results.append({"module": name, "error": error, "effects": effects})

    with open(config["output"], "w") as output:
        json.dump(results, output)
    """
)


def import_time_imports(name: str) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module that run when it is imported: outside functions
    (class bodies do run) and outside ``if TYPE_CHECKING:`` blocks (their ``else:`` runs)."""

    def is_type_checking(test: ast.expr) -> bool:
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )

    def visit(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If):
            test, body, orelse = node.test, node.body, node.orelse
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                test, body, orelse = test.operand, orelse, body
            if is_type_checking(test):
                body = []
            for child in [*body, *orelse]:
                yield from visit(child)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                yield from visit(child)

    yield from visit(tree(name))


def third_party_import_time_deps() -> list[str]:
    """Non-actorflow modules that actorflow modules import at import time."""
    deps: set[str] = set()
    for name in modules():
        for node in import_time_imports(name):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if not is_internal(alias.name))
            elif not node.level and node.module and not is_internal(node.module):
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return sorted(deps)


def test_every_module_imports_alone(tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**32))
    order = sorted(modules())
    random.Random(seed).shuffle(order)
    config = {
        "root": str(ROOT),
        "package": PACKAGE,
        "modules": order,
        "preload": third_party_import_time_deps(),
        "output": str(tmp_path / "results.json"),
        "progress": str(tmp_path / "progress"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    reproduce = f"seed {seed}; reproduce with {SEED_VARIABLE}={seed}"
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, str(tmp_path / "config.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    if proc.returncode != 0 or not (tmp_path / "results.json").exists():
        progress = tmp_path / "progress"
        current = progress.read_text() if progress.exists() else "(before the first module)"
        raise AssertionError(
            f"the import checker exited with {proc.returncode} while importing {current} "
            f"({reproduce}; order {order})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["module"] for r in results] == order
    errors = [
        f"* {r['module']}\n" + textwrap.indent(r["error"].rstrip(), "    ") for r in results if r["error"]
    ]
    # A side effect at one place shows in every module that imports that place: group them.
    effects: dict[tuple[str, ...], list[str]] = {}
    for r in results:
        if r["effects"]:
            effects.setdefault(tuple(r["effects"]), []).append(r["module"])
    side_effects = [
        f"* {', '.join(sorted(names))}\n" + "\n".join(f"    side effect at import time: {e}" for e in found)
        for found, names in sorted(effects.items(), key=lambda item: sorted(item[1]))
    ]
    with_effects = sum(len(names) for names in effects.values())
    assert not errors and not side_effects, (
        f"{len(errors)} of {len(order)} modules fail to import on their own, {with_effects} have side "
        f"effects at import time ({reproduce}):\n" + "\n".join(errors + side_effects)
    )


# --- 2. no private names across modules -----------------------------------------------------


def private_imports() -> Iterator[tuple[tuple[str, str, str], int, str]]:
    """``((importer, imported module, name), line, what)`` for every private name imported."""
    for importer in modules():
        for node in ast.walk(tree(importer)):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = imported_base(importer, node)
            for alias in node.names:
                if not is_private(alias.name) or base == importer:
                    continue
                key = (importer, base, alias.name)
                if f"{base}.{alias.name}" in modules():
                    if importer == base or importer.startswith(base + "."):
                        continue  # a private submodule, imported from inside its own package
                    yield key, node.lineno, f"private submodule {base}.{alias.name} outside {base}"
                else:
                    yield key, node.lineno, f"private name {alias.name} of {base}"


def test_no_private_names_imported_from_other_modules() -> None:
    found = list(private_imports())
    offenders = [
        f"{where(importer, line)}: {importer} imports {what}"
        for (importer, base, name), line, what in found
        if (importer, base, name) not in ALLOWED
    ]
    stale = sorted(set(ALLOWED) - {key for key, _, _ in found})
    print("\n".join(offenders))
    assert not offenders and not stale, (
        f"{len(offenders)} private imports (add to ALLOWED only with a reason):\n"
        + "\n".join(offenders)
        + (f"\nALLOWED entries that match no import any more: {stale}" if stale else "")
    )


# --- 3. sizes -----------------------------------------------------------------------------


def test_no_module_is_too_long() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    offenders = [
        f"{modules()[name].relative_to(ROOT)}: {lines} lines"
        for name, lines in sorted(sizes.items(), key=lambda item: -item[1])
        if lines > MAX_MODULE_LINES
    ]
    print("\n".join(offenders))
    assert not offenders, f"{len(offenders)} modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(offenders)


def functions(name: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method of a module (nested ones too), with its qualified name."""

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{child.name}", child
                yield from visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree(name), "")


def test_no_function_is_too_long() -> None:
    sizes = [
        (node.end_lineno - node.lineno + 1, where(name, node.lineno), f"{name}.{qualname}")
        for name in modules()
        for qualname, node in functions(name)
        if node.end_lineno is not None
    ]
    offenders = [
        f"{location}: {qualname} is {lines} lines"
        for lines, location, qualname in sorted(sizes, key=lambda item: -item[0])
        if lines > MAX_FUNCTION_LINES
    ]
    print("\n".join(offenders))
    assert not offenders, f"{len(offenders)} functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(
        offenders
    )


# --- 4. no import cycles ------------------------------------------------------------------


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports at import time: line of the first such import}.

    ``from pkg import name`` is an edge to ``pkg.name`` if that is a module, else to ``pkg``.
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in modules()}
    for importer in modules():
        for node in import_time_imports(importer):
            targets: list[str | None]
            if isinstance(node, ast.Import):
                targets = [owning_module(a.name) for a in node.names if is_internal(a.name)]
            else:
                base = imported_base(importer, node)
                if not is_internal(base):
                    continue
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else owning_module(base)
                    for a in node.names
                ]
            for target in targets:
                if target is not None and target != importer:
                    graph[importer].setdefault(target, node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm; the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ not in members:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")


def test_import_graph_is_acyclic() -> None:
    graph = import_graph()
    report = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        steps = [f"{a} -> {b} ({where(a, graph[a][b])})" for a, b in itertools.pairwise(cycle)]
        edges = [
            f"      {where(a, graph[a][b])}: {a} -> {b}"
            for a in component
            for b in sorted(graph[a])
            if b in component
        ]
        report.append(
            f"* {len(component)} modules import each other: {', '.join(component)}\n"
            f"    e.g. {'; '.join(steps)}\n    all import-time edges among them:\n" + "\n".join(edges)
        )
    print("\n".join(report))
    assert not report, f"{len(report)} import cycles:\n" + "\n".join(report)
