"""The experiment version control on the sql storage: branching by `orion hunt`,
the tree in `orion status`/`orion list`."""

from __future__ import annotations

import collections
import re
import shutil
from typing import Any

import pytest
from orion.client import get_experiment

pytestmark = [pytest.mark.functional, pytest.mark.slow]

X_PRIOR = "-x~uniform(-2, 2)"
Y_PRIOR = "-y~uniform(-1, 1, default_value=0)"  # a new dimension with a default: auto-resolved
TRIAL_LINE = re.compile(r"^\s*([0-9a-f]{32})\s+(\w+)\s+(\S+)\s*$")


def parse_status_blocks(output: str) -> dict[str, dict]:
    """`orion status` output as {experiment title: {"offset": indent, "lines": [table rows]}}."""
    blocks: dict[str, dict[str, Any]] = {}
    title = None
    lines = output.splitlines()
    for line, underline in zip(lines, lines[1:] + [""], strict=True):
        stripped = line.strip()
        if stripped and underline.strip() == "=" * len(stripped):
            title = stripped
            blocks[title] = {"offset": len(line) - len(line.lstrip()), "lines": []}
        elif title and stripped and not set(stripped) <= set("=- ") and not stripped.startswith(("id ", "status ")):
            blocks[title]["lines"].append(stripped)
    return blocks


def shown(value: float) -> str:
    """A number as `orion status` prints it (tabulate's default format)."""
    return format(value, "g")


def trials_shown(block: dict) -> dict[str, tuple[str, str]]:
    """The rows of an `orion status --all` table: {trial id: (status, objective)}."""
    rows = {}
    for line in block["lines"]:
        match = TRIAL_LINE.match(line)
        assert match, f"not a trial row of `orion status`: {line!r}"
        trial_id, status, objective = match.groups()
        rows[trial_id] = (status, objective)
    return rows


def summary_shown(block: dict) -> dict[str, tuple[int, str]]:
    """The rows of an `orion status` summary: {status: (quantity, min objective)}."""
    return {status: (int(quantity), minimum) for status, quantity, minimum in (line.split() for line in block["lines"])}


def stored_table(trials) -> dict[str, tuple[str, str]]:
    """What `orion status --all` should print for these trials."""
    return {trial.id: (trial.status, shown(trial.objective.value)) for trial in trials}


def stored_summary(trials) -> dict[str, tuple[int, str]]:
    """What the `orion status` summary should print for these trials."""
    objectives = collections.defaultdict(list)
    for trial in trials:
        objectives[trial.status].append(trial.objective.value)
    return {status: (len(values), shown(min(values))) for status, values in objectives.items()}


def test_branching_by_space_and_script_then_status_and_list_show_the_tree(
    orion_cli, sql_storage, storage_config, tmp_path
):
    other_script = str(shutil.copy(orion_cli.blackbox, tmp_path / "blackbox_v3.py"))
    orion_cli.run("hunt", "-n", "evc", "--exp-max-trials", "3", *orion_cli.script(X_PRIOR))
    # Version 2: the space changes (a new dimension y, whose default adapts v1's trials).
    orion_cli.run("hunt", "-n", "evc", "--enable-evc", "--exp-max-trials", "5", *orion_cli.script(X_PRIOR, Y_PRIOR))
    # Version 3: the script changes (a command line change, which breaks the link to v2's trials).
    orion_cli.run(
        "hunt", "-n", "evc", "--enable-evc", "--exp-max-trials", "2",
        *orion_cli.script(X_PRIOR, Y_PRIOR, blackbox=other_script),
    )

    versions = {document["version"]: document for document in sql_storage.fetch_experiments({"name": "evc"})}
    assert sorted(versions) == [1, 2, 3]
    v1, v2, v3 = (versions[number]["_id"] for number in (1, 2, 3))
    assert versions[1]["refers"]["parent_id"] is None
    assert versions[2]["refers"]["parent_id"] == v1
    assert versions[3]["refers"]["parent_id"] == v2
    assert {document["refers"]["root_id"] for document in versions.values()} == {v1}
    assert sql_storage.fetch_experiments({"refers.parent_id": v1}) == [versions[2]]

    own = {number: sql_storage.fetch_trials(uid=uid) for number, uid in ((1, v1), (2, v2), (3, v3))}
    experiments = {number: get_experiment("evc", version=number, storage=storage_config) for number in (1, 2, 3)}
    # v2 sees v1's trials through the EVC, adapted with y's default value; v3 (a broken
    # command line) sees only its own.
    v2_tree = experiments[2].fetch_trials(with_evc_tree=True)
    assert len(v2_tree) == len(own[1]) + len(own[2])
    assert {(trial.params["/x"], 0) for trial in own[1]} <= {
        (trial.params["/x"], trial.params["/y"]) for trial in v2_tree
    }
    assert {trial.id for trial in own[2]} <= {trial.id for trial in v2_tree}
    assert stored_table(experiments[3].fetch_trials(with_evc_tree=True)) == stored_table(own[3])
    assert {trial.id for trial in experiments[2].fetch_trials(with_evc_tree=False)} == {trial.id for trial in own[2]}

    summary, tree, collapsed, listing = orion_cli.run_together(
        ["status"], ["status", "--all", "--expand-versions"], ["status", "--all", "--collapse"], ["list"]
    )

    # The tree: each version with its own trials, indented under its parent.
    blocks = parse_status_blocks(tree.stdout)
    assert list(blocks) == ["evc-v1", "evc-v2", "evc-v3"]
    assert [blocks[title]["offset"] for title in blocks] == [0, 2, 4]
    for number in (1, 2, 3):
        assert trials_shown(blocks[f"evc-v{number}"]) == stored_table(own[number])

    # Collapsed (and by default): the latest version, with the trials its EVC tree gives it.
    v3_tree = experiments[3].fetch_trials(with_evc_tree=True)
    collapsed_blocks = parse_status_blocks(collapsed.stdout)
    assert list(collapsed_blocks) == ["evc-v3"]
    assert trials_shown(collapsed_blocks["evc-v3"]) == stored_table(v3_tree)
    summary_blocks = parse_status_blocks(summary.stdout)
    assert list(summary_blocks) == ["evc-v3"]
    assert summary_shown(summary_blocks["evc-v3"]) == stored_summary(v3_tree)

    assert [line.strip(" ┐└") for line in listing.stdout.splitlines() if line.strip()] == ["evc-v1", "evc-v2", "evc-v3"]
