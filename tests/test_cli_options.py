"""CLI options cannot drift from the library: same defaults, same choices, same fields.

The command modules restate no library default they could import from
``kdlens._internal.defaults``; where they must write a literal (the library module is
heavy, or needs torch, and ``--help`` must not import it), these tests hold the two
sides together: change a default on one side only and a test here fails.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kdlens.cli import app, harness_cmd

_REQUIRED = object()  # a library parameter without a default
_ints, _size = harness_cmd._ints, harness_cmd._size


def _params(target: Any) -> dict[str, Any]:
    """Parameter name -> default of a function, or field name -> default of a dataclass."""
    if dataclasses.is_dataclass(target):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(target):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = _REQUIRED
        return out
    return {
        name: _REQUIRED if p.default is inspect.Parameter.empty else p.default
        for name, p in inspect.signature(target).parameters.items()
    }


def _targets(command: str) -> list[tuple[Any, dict[str, str]]]:
    """The library callables (or config classes) a command feeds, with CLI -> library names."""
    from kdlens.analysis.engine import analyze
    from kdlens.hypotheses.compare import compare_stores
    from kdlens.hypotheses.controls import make_controls
    from kdlens.measures.similarity import store_class_graph
    from kdlens.recommend.ensemble import recommend_with_ensemble
    from kdlens.recommend.rank import recommend
    from kdlens.report.build import build_report
    from kdlens.store.importing import import_files
    from kdlens.store.mixture import write_ensemble
    from kdlens.store.validate import validate

    table: dict[str, list[tuple[Any, dict[str, str]]]] = {
        "analyze": [(analyze, {})],
        "controls": [(make_controls, {"output": "out"})],
        "recommend": [(recommend, {}), (recommend_with_ensemble, {})],
        "ensemble": [(write_ensemble, {})],
        "report": [(build_report, {})],
        "compare": [
            (compare_stores, {"real_students": "real_store", "control_students": "control_store"})
        ],
        "graph": [(store_class_graph, {})],
        "validate": [(validate, {"store": "source"})],
        "import": [(import_files, {})],
    }
    if command in ("dump", "distill", "demo"):
        pytest.importorskip("torch")
        from kdlens.harness import DumpConfig, StudentConfig, distill, dump_checkpoints
        from kdlens.harness.demo import run_demo

        # dump_checkpoints' `checkpoints` are files, not the epochs of --checkpoints.
        table["dump"] = [(DumpConfig, {}), (dump_checkpoints, {"checkpoints": ""})]
        # distill's `student` is the StudentConfig that --student's model name goes into.
        table["distill"] = [
            (distill, {"student": ""}),
            (StudentConfig, harness_cmd.STUDENT_OPTIONS),
        ]
        table["demo"] = [(run_demo, {"out": "out_dir"})]
    return table[command]


#: Options that feed no library parameter (output format, where the CLI writes, ...).
CLI_ONLY: dict[str, set[str]] = {
    "analyze": {"output", "as_json", "per_example", "quiet"},
    "controls": {"as_json", "quiet"},
    "recommend": {"as_json", "quiet", "ensemble"},
    "ensemble": {"ctx", "from_recommendation", "as_json", "quiet"},
    "report": {"quiet"},
    "compare": {"as_json", "quiet"},
    "graph": {"output", "hierarchy", "as_json", "quiet"},  # graph: write_graph's path; ...
    "validate": {"as_json", "quiet"},
    "import": {"as_json", "quiet"},
    "dump": {"from_checkpoints", "quiet", "as_json"},
    # distill: the CLI writes to ./students by default, the library writes nothing.
    "distill": {"out", "quiet", "as_json"},
    "demo": {"quiet"},
}

#: How a CLI default (a string to parse) becomes the library's value.
PARSE: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("dump", "hidden"): lambda s: _ints(s, "hidden"),
    ("dump", "batch_sizes"): lambda s: _ints(s, "batch-sizes"),
    ("dump", "seeds"): lambda s: _ints(s, "seeds"),
    ("dump", "checkpoints"): lambda s: _ints(s, "checkpoints"),
    ("dump", "train_size"): lambda s: _size(s, "train"),
    ("dump", "val_size"): lambda s: _size(s, "val"),
    ("dump", "test_size"): lambda s: _size(s, "test"),
    ("distill", "student_hidden"): lambda s: _ints(s, "student-hidden"),
    ("distill", "seeds"): lambda s: _ints(s, "seeds"),
}


def _commands() -> dict[str, Any]:
    return dict(get_command(app).commands)  # type: ignore[attr-defined]


def _mismatches(command: str, cli: Any, targets: list[tuple[Any, dict[str, str]]]) -> list[str]:
    """Every way the command's options disagree with the library parameters they feed."""
    problems = []
    for p in cli.params:
        if p.name in CLI_ONLY[command]:
            continue
        fed = False
        for target, rename in targets:
            lib = _params(target)
            name = rename.get(p.name, p.name)
            if name not in lib:
                continue
            fed = True
            if p.required or lib[name] is _REQUIRED:
                continue  # a required side has no default to compare
            value = PARSE.get((command, p.name), lambda v: v)(p.default)
            if value != lib[name] or type(value) is not type(lib[name]):
                problems.append(
                    f"{p.name}: CLI default {value!r} != {target.__name__}.{name} = {lib[name]!r}"
                )
        if not fed:
            problems.append(f"{p.name}: feeds no library parameter and is not listed as CLI-only")
    return problems


def test_every_command_is_covered() -> None:
    assert set(_commands()) == set(CLI_ONLY)


@pytest.mark.parametrize("command", sorted(CLI_ONLY))
def test_option_defaults_equal_the_library_defaults(command: str) -> None:
    targets = _targets(command)
    assert _mismatches(command, _commands()[command], targets) == []


def test_the_default_check_can_fail() -> None:
    from kdlens.analysis.engine import analyze

    def drifted(store: Any, *, oemc_delta: float = 0.1, n_bins: int = 15) -> None: ...

    drifted.__name__ = analyze.__name__
    problems = _mismatches("analyze", _commands()["analyze"], [(drifted, {})])
    assert any(p.startswith("oemc_delta: CLI default 0.05") for p in problems), problems
    assert any(p.startswith("n_permutations: feeds no library parameter") for p in problems)


def test_every_dumpconfig_field_has_a_dump_option() -> None:
    pytest.importorskip("torch")
    from kdlens.harness import DumpConfig

    options = {p.name for p in _commands()["dump"].params}
    fields = {f.name for f in dataclasses.fields(DumpConfig)}
    assert fields - options == harness_cmd.DUMPCONFIG_NOT_ON_CLI
    assert options - fields == harness_cmd.DUMP_NOT_IN_CONFIG


def test_every_studentconfig_field_has_a_distill_option() -> None:
    pytest.importorskip("torch")
    from kdlens.harness import StudentConfig

    options = {harness_cmd.STUDENT_OPTIONS.get(p.name) for p in _commands()["distill"].params}
    fields = {f.name for f in dataclasses.fields(StudentConfig)}
    assert fields - options == harness_cmd.STUDENTCONFIG_NOT_ON_CLI


def test_choices_restated_for_a_fast_help_equal_the_library_ones() -> None:
    from kdlens.cli import analyze_cmd, store_cmd
    from kdlens.hypotheses.controls import CONTROL_KINDS
    from kdlens.store.importing import KINDS

    assert analyze_cmd.CONTROL_KINDS == tuple(CONTROL_KINDS)
    assert store_cmd.KINDS == tuple(KINDS)


# Library messages name parameters (`overwrite=True`); the CLI says them as its flags.


def test_cli_words_turns_parameters_into_this_commands_flags() -> None:
    from kdlens.cli._app import cli_words

    flags = {"overwrite": "--overwrite", "kind": "--kind", "store": "STORE"}
    assert cli_words("x: exists (pass `overwrite=True`)", flags) == "x: exists (pass --overwrite)"
    assert cli_words("use `kind=probs` unless", flags) == "use --kind probs unless"
    assert cli_words("`store` is empty", flags) == "STORE is empty"
    assert cli_words("`n_bootstrap` must be >= 0", flags) == "`n_bootstrap` must be >= 0"


def test_every_option_of_every_command_can_be_named() -> None:
    from kdlens.cli._app import cli_flags

    for name, cmd in _commands().items():
        flags = cli_flags(cmd.callback)
        for p in cmd.params:
            want = p.name.upper() if not p.opts[0].startswith("-") else None
            assert p.name in flags, (name, p.name)
            assert want is None or flags[p.name] == want or flags[p.name] in p.opts


def test_a_library_error_names_the_parameter_and_the_cli_the_flag(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    from kdlens.errors import InputError
    from kdlens.store.importing import import_files

    src = tmp_path / "a.npy"
    np.save(src, np.zeros((4, 3), dtype=np.float32))
    out = tmp_path / "store"
    import_files([src], out, kind="logits")
    with pytest.raises(InputError, match="pass `overwrite=True`"):
        import_files([src], out, kind="logits")
    res = CliRunner().invoke(app, ["import", str(src), "-o", str(out), "--kind", "logits"])
    assert res.exit_code == 2
    assert "pass --overwrite" in res.output and "`" not in res.output


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _strings(node: ast.AST) -> list[tuple[int, str]]:
    return [
        (n.lineno, n.value)
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_library_messages_name_parameters_not_flags() -> None:
    root = Path(__file__).resolve().parents[1] / "kdlens"
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else node
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if not (isinstance(node, ast.Raise) or name in ("warn", "message")):
                continue
            found += [f"{rel}:{ln}: {s!r}" for ln, s in _strings(call) if _FLAG.search(s)]
    assert found == []
