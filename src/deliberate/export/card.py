"""The dataset card: a ``README.md`` written beside an export's data files.

It says what is in the files and where it came from — counts per split and per
pair type or label, the filters and the rows each dropped, the run (strategy,
suite, models, and the models the calls actually went to), the command that makes
the same export again, what every provenance field means, and which TRL trainer
reads each file. A YAML header lists the files by split, so
``datasets.load_dataset(DIR)`` finds them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deliberate.export.base import ExportOptions
from deliberate.tree import RunRecord

if TYPE_CHECKING:
    from deliberate.export.runner import ExportResult

__all__ = ["command_line", "render_card", "trainer_for"]

COLUMN_DOCS: dict[str, str] = {
    "prompt": "the prompt: a string, or (conversational) a list of chat messages",
    "chosen": "the preferred completion: a string, or one assistant message in a list",
    "rejected": "the dispreferred completion, in the same form as `chosen`",
    "completion": "the completion: a string, or one assistant message in a list",
    "label": "true when the completion is desirable (judged right)",
    "messages": "the conversation: system and user turns, then the assistant's answer",
}

PROVENANCE_DOCS: dict[str, dict[str, str]] = {
    "dpo": {
        "run_id, task_id": "the run and the task the pair came from",
        "pair_type": "`sibling` (two children of one node), `best_worst` (the task's best "
                     "and worst finished candidates) or `refinement` (a refined version "
                     "and the version it repaired)",
        "level": "`answer` (whole candidates) or `step` (next steps after a shared prefix)",
        "chosen_node, rejected_node": "ids of the two nodes (see: deliberate show RUN TASK)",
        "parent_node": "the shared parent (sibling), or the initial version (refinement)",
        "margin": "the gap that decided the pair: 1 for labels, the value gap otherwise",
        "signal": "`label` (grader or verifier verdicts), `value` (node values) or "
                  "`reward` (the nodes' own rewards)",
        "source": "who decided: the grading verifier (`verifier:NAME`), or the signal",
        "chosen_label, rejected_label": "the nodes' right/wrong labels (null: none)",
        "chosen_value, rejected_value": "the nodes' values on [0, 1] (null: none)",
        "direction": "refinement pairs: `fixed` (refined ≻ initial) or `broke` "
                     "(initial ≻ refined)",
    },
    "kto": {
        "run_id, task_id": "the run and the task the row came from",
        "node": "the candidate's node id",
        "operator": "how the node was made (generate, refine, step, …)",
        "signal": "`label` (grader or verifier) or `critic` (a critic's verdict, only "
                  "with kto_critic)",
        "source": "who labelled it (`verifier:NAME` or `model:ID`)",
        "value": "the node's value on [0, 1] (null: none)",
        "chosen": "whether the strategy chose this candidate",
    },
    "sft": {
        "run_id, task_id": "the run and the task the row came from",
        "node": "the candidate's node id",
        "operator": "how the node was made",
        "choice": "`chosen` (the strategy's choice, verified right), `verified` (another "
                  "candidate verified right) or `unverified` (sft_unverified, no verifier)",
        "label, source": "the verifier's verdict and its name (null when unverified)",
        "value": "the node's value on [0, 1] (null: none)",
    },
}


def trainer_for(columns: Sequence[str]) -> str:
    """The TRL trainer that reads rows with these columns."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "`DPOTrainer` (the same columns suit `ORPOTrainer`, `CPOTrainer`, `RewardTrainer`)"
    if {"completion", "label"} <= cols:
        return "`KTOTrainer` (unpaired preference data)"
    if {"completions", "labels"} <= cols:
        return "`PRMTrainer` (stepwise supervision)"
    if "messages" in cols:
        return "`SFTTrainer` (conversational language modelling)"
    if {"prompt", "completion"} <= cols:
        return "`SFTTrainer` (prompt-completion)"
    return "see docs/export.md"


def command_line(kind: str, run_id: str, out: str, fmt: str, opts: ExportOptions, *,
                 store: str | None = None, tasks: Iterable[str] | None = None) -> str:
    """The ``deliberate export`` command that makes this export again."""
    words = ["deliberate", "export", kind, "--run", run_id]
    if store:
        words += ["--store", store]
    words += ["--out", out]
    if fmt != "jsonl":
        words += ["--format", fmt]
    defaults = type(opts)()
    d = opts.model_dump()
    flags = {"margin": "--margin", "min_chars": "--min-chars", "max_chars": "--max-chars",
             "test_share": "--test-share", "split_seed": "--split-seed"}
    for key, flag in flags.items():
        if d[key] != getattr(defaults, key) and d[key] is not None:
            words += [flag, f"{d[key]:g}" if isinstance(d[key], float) else str(d[key])]
    for key, flag in (("dedup", "--no-dedup"),):
        if not d[key]:
            words.append(flag)
    switches = {"conversational": "--conversational", "kto_critic": "--kto-critic",
                "sft_unverified": "--sft-unverified"}
    for key, flag in switches.items():
        if d.get(key):
            words.append(flag)
    for key, value in d.items():
        if key not in flags and key not in switches and key != "dedup" \
                and value != getattr(defaults, key):
            words += ["-o", f"{key}={value}"]
    for t in tasks or ():
        words += ["--task", t]
    return shlex.join(words)


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "defaults"


def render_card(res: ExportResult, run: RunRecord, models: Sequence[tuple[str, str, int]],
                *, description: str, command: str) -> str:
    """The card's Markdown."""
    columns = res.columns
    splits = list(res.files)
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: {res.files[s].name}"]
    lines += ["tags:", "- deliberate", f"- {res.kind}", "---", ""]
    lines += [f"# `{res.kind}` export of run `{res.run_id}`", "",
              f"{description[:1].upper()}{description[1:]}, exported by `deliberate` from the "
              f"search and refinement trees of one run. Train and test are split **by task**: "
              f"no task has rows in both.", ""]

    lines += ["## Files", ""]
    all_splits = sorted(set(res.tasks) | set(res.rows), key=lambda s: (s != "train", s))
    lines += _table(["split", "file", "rows", "tasks read", "tasks with rows"], [
        (s, f"`{res.files[s].name}`" if s in res.files else "(none: no rows)",
         res.rows.get(s, 0), res.tasks.get(s, 0), res.tasks_with_rows.get(s, 0))
        for s in all_splits])
    lines += ["", f"{res.total_rows} rows from {res.tasks_read} tasks read; "
              f"{res.tasks_read - sum(res.tasks_with_rows.values())} tasks gave no row"
              + (f"; {res.tasks_without_tree} had no stored tree" if res.tasks_without_tree
                 else "") + ".", ""]

    groups = sorted({g for by in res.groups.values() for g in by})
    if groups:
        lines += ["## Rows by type", ""]
        lines += _table(["type", *all_splits],
                        [(g, *(res.groups.get(s, {}).get(g, 0) for s in all_splits))
                         for g in groups])
        lines.append("")

    o = res.options
    length = (f"completions of at least {o.min_chars} characters are kept" if o.max_chars is None
              else f"completions of {o.min_chars} to {o.max_chars} characters are kept")
    lines += ["## Filters", ""]
    lines += _table(["filter", "setting", "rows dropped"], [
        ("margin", f"pairs whose margin is at most {o.margin:g} are dropped", res.dropped["margin"]),
        ("length", length, res.dropped["length"]),
        ("dedup", "rows whose columns repeat an earlier row's are dropped" if o.dedup else "off",
         res.dropped["duplicate"]),
    ])
    lines += ["", f"{res.extracted} rows were extracted before the filters. Split: "
              f"{o.test_share:g} of the tasks held out as test (seed {o.split_seed}).", ""]

    cfg = run.config
    lines += ["## Source", ""]
    lines += [f"- run: `{run.id}` ({run.status})",
              f"- strategy: `{cfg.get('strategy', '?')}` with "
              f"{_params(cfg.get('strategy_params') or {})}",
              f"- suite: `{cfg.get('suite', '?')}`"
              + (f" (first {cfg['limit']} tasks)" if cfg.get("limit") else ""),
              f"- grading verifier: `{cfg.get('verifier', '?')}`",
              f"- model: `{cfg.get('model') or 'default'}`"]
    for role in ("generator", "judge", "critic", "refiner"):
        rc = cfg.get(role)
        if isinstance(rc, dict) and rc.get("model"):
            lines.append(f"- {role} model: `{rc['model']}`")
    for role, rc in (cfg.get("roles") or {}).items():
        if isinstance(rc, dict) and rc.get("model"):
            lines.append(f"- {role} model: `{rc['model']}`")
    lines.append(f"- seed: {cfg.get('seed', '?')}")
    if models:
        lines += ["", "Model calls of the run, by model and role:", ""]
        lines += _table(["model", "role", "calls"], models)
    lines.append("")

    lines += ["## How it was made", "", "```sh", command, "```", ""]

    lines += ["## Columns", ""]
    lines += [f"- `{c}`: {COLUMN_DOCS.get(c, 'see docs/export.md')}" for c in columns]
    lines += ["- `provenance`: where the row came from"
              + (" (a JSON string in Parquet: `json.loads` it)" if res.fmt == "parquet" else "")
              + "; trainers ignore it", ""]
    docs = PROVENANCE_DOCS.get(res.kind)
    lines += ["### Provenance", ""]
    if docs:
        lines += [f"- `{k.replace(', ', '`, `')}`: {v}" for k, v in docs.items()]
    else:
        lines += [f"- `{k}`" for k in res.provenance_keys]
    lines.append("")

    files = ", ".join(f'"{s}": "{res.files[s].name}"' for s in splits)
    loader = "parquet" if res.fmt == "parquet" else "json"
    lines += ["## Training", "", f"Each file suits TRL's {trainer_for(columns)}. From this "
              "directory:", "", "```python", "from datasets import load_dataset", "",
              f'data = load_dataset("{loader}", data_files={{{files}}})',
              'data = data.remove_columns("provenance")', "```", ""]
    return "\n".join(lines)
