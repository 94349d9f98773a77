"""Read models over the event log (ADR 0008), one module per view, kept by ``runner``:

- ``caps``: annual aid due against the cap per recipient × year × scheme × kind (R-CAP-2);
- ``community``: 四医联动 community-centre aid and visits per recipient × month, suspensions (R-4L-4);
- ``duplicates``: the duplicate-aid index with the events that matched and why (R-CLR-1(b), R-PH-7);
- ``funds``: double-entry fund books and their check (R-CLR-2, R-CLR-3);
- ``statement``: each recipient's expenses, decisions, payouts and recoveries in order;
- ``cuts``: every notification's recorded time (a range read for "known at T") and, per recipient
  and month, the state a (V, T) snapshot needs (R-TIME-3, ADR 0010).

``report.scenario_views`` runs them over an in-memory log for the scenario runner.
"""
