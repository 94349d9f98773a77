"""Where each rule comes from: the seed clause every rule id cites (docs/rules.md, RULES.md).

The explanation of a decision names each rule it applied with its own clause ("R-CAP-2 [002 4.3]"),
not only the clause of the scheme's rates. Seeds: [000] Changning 四医联动, [001] Shanghai medical
aid, [002] Changning's post-hoc procedure, [003] community mutual aid, [004] Lianyungang.
"""

from __future__ import annotations

#: rule id -> the clause(s) it restates, as docs/rules.md cites them.
RULE_CLAUSES: dict[str, str] = {
    "R-TIME-1": "RULES.md §1",
    "R-TIME-2": "RULES.md §1",
    "R-TIME-3": "RULES.md §1",
    "R-CAT-1": "[002 3.2]",
    "R-CAT-2": "[001 二(一)]",
    "R-CAT-3": "[002 4.3]",
    "R-CAT-4": "[001 四]",
    "R-CAT-5": "[004 三]",
    "R-INS-1": "[001 二(二)1; 000 第二条(二)1]",
    "R-INS-2": "[001 二(二)1; 001 二(四)2; 004 四(一)]",
    "R-INS-3": "[001 四 末段; 001 二(二)3]",
    "R-INS-4": "[001 二(二)3; 002 4.4; 000 第七条]",
    "R-INS-5": "[002 3.6]",
    "R-INS-6": "[002 4.2; 001 二(二)3]",
    "R-CAP-1": "[001 二(二)4]",
    "R-CAP-2": "[002 4.3]",
    "R-CAP-3": "[001 二(二)4]",
    "R-CAP-4": "[000 第七条]",
    "R-4L-1": "[000 第二条(二)2; 000 第四条(二)2]",
    "R-4L-2": "[000 第四条(二)]",
    "R-4L-3": "[000 第六条]",
    "R-4L-4": "[000 第四条(三)]",
    "R-4L-5": "[000 第四条(四)]",
    "R-4L-6": "[000 第七条]",
    "R-PH-1": "[002 4.1; 002 3.1; 002 4.6]",
    "R-PH-2": "[002 3.2]",
    "R-PH-3": "[002 3.3]",
    "R-PH-4": "[002 3.4]",
    "R-PH-5": "[002 4.3]",
    "R-PH-6": "[002 3.5]",
    "R-PH-7": "[002 4.5]",
    "R-PH-8": "[002 4.5]",
    "R-PH-9": "[002 4.7]",
    "R-PH-10": "[002 4.4]",
    "R-CLR-1": "[002 4.5; 000 第七条]",
    "R-CLR-2": "[000 第七条; 002 4.4, 4.5]",
    "R-CLR-3": "[000 第七条; 002 4.4, 4.5]",
    "R-MA-1": "[003 五(一)(二)]",
    "R-MA-2": "[003 五(三)]",
    "R-MA-3": "[003 四(一)]",
    "R-LYG-1": "[004 五(一)]",
    "R-LYG-2": "[004 五(一)]",
    "R-LYG-3": "[004 五(二)]",
    "R-LYG-4": "[004 六]",
}


def clause_of(rule: str) -> str | None:
    """The clause a rule id cites (``R-CLR-1(e)`` reads as ``R-CLR-1``), or None."""
    return RULE_CLAUSES.get(rule.split("(", 1)[0])


def cite(rules: list[str]) -> list[dict[str, str | None]]:
    """Each rule with its own clause, in the order given."""
    return [{"rule": r, "clause": clause_of(r)} for r in rules]
