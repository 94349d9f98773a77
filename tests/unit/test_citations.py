"""Every rule id of docs/rules.md has its clause in ``ledger.citations``, and the clause is the one
docs/rules.md cites for it (so an explanation never files a rule under another rule's clause)."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.citations import RULE_CLAUSES, clause_of

RULES = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text(encoding="utf-8")


def test_every_rule_has_a_clause_and_no_other():
    ids = set(re.findall(r"\*\*(R-[A-Z0-9]+-\d+)\*\*", RULES))
    assert ids == set(RULE_CLAUSES)


#: Rules whose clause is the one their whole section cites (docs/rules.md gives them none of their
#: own): the annual limits of [001 二(二)4] (分类设定医疗救助比例及年度救助限额), and clearing's.
SECTION_CITED = {"R-CAP-1": "[001 二(二)4]", "R-CAP-3": "[001 二(二)4]",
                 "R-CLR-2": "[000 第七条; 002 4.4, 4.5]", "R-CLR-3": "[000 第七条; 002 4.4, 4.5]"}


def test_each_clause_is_cited_beside_its_rule_in_rules_md():
    for rule, clause in RULE_CLAUSES.items():
        if not clause.startswith("[") or rule in SECTION_CITED:
            assert rule not in SECTION_CITED or SECTION_CITED[rule] == clause
            continue
        start = RULES.index(f"**{rule}**")
        body = RULES[start:RULES.find("\n- **", start + 1)]
        for part in clause.strip("[]").split("; "):
            seed, _, where = part.partition(" ")
            assert seed in body and where.split(",")[0].split(" ")[0] in body, (rule, part)


def test_a_sub_clause_reads_as_its_rule():
    assert clause_of("R-CLR-1(e)") == RULE_CLAUSES["R-CLR-1"] and clause_of("R-NONE-1") is None
