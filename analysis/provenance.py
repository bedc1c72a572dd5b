"""The report's provenance: the search's records (n2n_models.provenance) as a table in its header,
a line when a resume recorded a change, and a one-line warning when the trials ran on different
instruction sets or versions. Reads the experiment folder only."""
from __future__ import annotations

import shlex

import pandas as pd

from n2n_models.provenance import (
    FIELDS,
    SEARCH_FILE,
    changes,
    mixed,
    read_search_records,
    read_trial_records,
)

from .load import ExperimentData
from .tables import markdown_table


def trial_records(exp: ExperimentData) -> dict[str, list[dict]]:
    """trial_id -> that trial's records (oldest first), for the trials that wrote any."""
    out = {}
    for trial_id, folder in exp.trials["folder"].items():
        records = read_trial_records(exp.path / folder) if folder else []
        if records:
            out[trial_id] = records
    return out


def shown(value) -> str:
    """A record's value as the report prints it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return f"`{shlex.join(str(v) for v in value)}`" if value else "—"
    if isinstance(value, dict):
        set_vars = [f"{k}={v}" for k, v in value.items() if v is not None]
        return ", ".join(set_vars) if set_vars else "none of " + ", ".join(value)
    return str(value)


def _values_text(fields: dict[str, list], between: str) -> str:
    return "; ".join(f"{FIELDS.get(k, k)} " + between.join(shown(v) for v in values) for k, values in fields.items())


def resumed_line(records: list[dict]) -> str | None:
    """One line when the search was started or resumed under more than one provenance."""
    if len(records) < 2:
        return None
    steps = []
    for i in range(1, len(records)):
        before, after = records[i - 1], records[i]
        fields = {k: [before.get(k), after.get(k)] for k in changes(before, after)}
        steps.append(f"record {i + 1} differs from record {i} in {_values_text(fields, ' → ')}")
    return "Resumed under changed provenance: " + "; ".join(steps) + "."


def mixed_trials_line(records: dict[str, list[dict]]) -> str | None:
    """One warning line when the trials' records differ in versions or instruction sets."""
    differ = mixed([r for rs in records.values() for r in rs])
    if not differ:
        return None
    return (f"**Warning:** the trials of this experiment ran on different machines or versions "
            f"({_values_text(differ, ' vs ')}); their results may not be comparable.")


def provenance_md(exp: ExperimentData) -> list[str]:
    """The report header's provenance section: the search's records, one column each, and the lines above."""
    records = read_search_records(str(exp.path))
    lines = ["## Provenance", ""]
    if records:
        table = pd.DataFrame({"field": list(FIELDS.values()),
                              **{f"record {i + 1}": [shown(r.get(k)) for k in FIELDS] for i, r in enumerate(records)}})
        about = (f"Code, libraries and machine of the search's driver, from `{exp.path.name}/{SEARCH_FILE}`; "
                 "each trial's own record is in its folder.")
        lines += [about, "", markdown_table(table), ""]
    else:
        lines += ["No provenance record: this search was made before they were kept.", ""]
    for line in provenance_notes(exp, records):
        lines += [line, ""]
    return lines


def provenance_notes(exp: ExperimentData, records: list[dict] | None = None) -> list[str]:
    """The lines a reader must not miss: a resume under changed provenance, trials on mixed machines."""
    records = read_search_records(str(exp.path)) if records is None else records
    return [line for line in (resumed_line(records), mixed_trials_line(trial_records(exp))) if line]
