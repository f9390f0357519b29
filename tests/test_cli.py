"""``salt-seg`` as a whole (salt_seg/cli.py): the README's shared-flag table and the parsers agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from salt_seg.cli import build_parser, main

README = Path(__file__).parents[1] / "README.md"


def _shared_flag_table() -> dict[str, set[str]]:
    """``--flag -> {command, ...}`` from the README's "Shared flags" table."""
    text = README.read_text()
    table = text[text.index("Shared flags") :].split("\n\n")[1]
    rows = [r for r in table.splitlines() if r.startswith("| `--")]
    out = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        flag = cells[0].strip("`").split()[0]
        out[flag] = set(re.findall(r"`([a-z][a-z-]*)`", cells[-1]))
    return out


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def test_readme_lists_exactly_the_commands_that_take_each_shared_flag() -> None:
    table = _shared_flag_table()
    assert set(table) == {
        "--variant",
        "--checkpoint",
        "--model",
        "--device",
        "--threads",
        "--set",
        "--precision",
        "--backend",
    }
    assert table["--threads"] == {"train", "pretrain", "predict", "evaluate", "app"}
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for flag, listed in table.items():
        taking = {c for c in commands if flag in _options(c)}
        assert taking == listed, (
            f"{flag}: README lists {sorted(listed)}, the CLI takes it in {sorted(taking)}"
        )


def test_evaluate_takes_threads_and_hands_them_to_the_device(tmp_path, monkeypatch, capsys) -> None:
    import salt_seg.commands.common as common

    seen = []

    def fake_resolve(name: str = "auto", threads: int | None = None):
        seen.append((name, threads))
        raise ValueError("stopped before loading the run")

    monkeypatch.setattr(common, "resolve_device", fake_resolve)
    rc = main(["evaluate", "--model", str(tmp_path), "--device", "cpu", "--threads", "3"])
    assert rc == 2 and "stopped before loading the run" in capsys.readouterr().err
    assert seen == [("cpu", 3)]


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_evaluate_refuses_a_bad_thread_count_in_one_line(tmp_path, capsys, threads: str) -> None:
    rc = main(["evaluate", "--model", str(tmp_path), "--device", "cpu", "--threads", threads])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"salt-seg evaluate: error: --threads must be >= 1, got {threads}\n"
