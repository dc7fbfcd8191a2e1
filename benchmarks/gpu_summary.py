"""One table from what benchmarks/gpu_check.sh's parts wrote: pytest's JUnit XML and gpu_rows.py's JSON lines.

    python benchmarks/gpu_summary.py --machine machine.txt --junit tests.xml --rows rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def test_rows(junit: Path) -> list[dict]:
    """One row per test case: its seconds and how it ended (the reason of a skip, the first line of a failure)."""
    if not junit.exists():
        return [dict(part="tests", row="pytest -m cuda", setting="", value=None, unit="",
                     note="no report: pytest did not finish")]
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                message = (found.get("message") or found.text or "").strip().splitlines()
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag] + (
                    f": {message[0][:120]}" if message else "")
                break
        rows.append(dict(part="tests", row=case.get("name", "?"), setting=case.get("classname", "").split(".")[-1],
                         value=float(case.get("time", "nan")), unit="s", note=outcome))
    return rows


def fmt(value: float | None) -> str:
    """Three significant digits (thousands with separators); '-' for no value."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", type=Path, help="a file whose text heads the table")
    parser.add_argument("--junit", type=Path, required=True)
    parser.add_argument("--rows", type=Path, required=True)
    args = parser.parse_args()
    rows = test_rows(args.junit)
    if args.rows.exists():
        rows += [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    if args.machine and args.machine.exists():
        print(args.machine.read_text().strip())
    tests = [r for r in rows if r["part"] == "tests"]
    failed = [r for r in tests if r["note"].startswith(("FAILED", "ERROR", "no report"))]
    print(f"tests: {sum(r['note'] == 'passed' for r in tests)} passed, "
          f"{sum(r['note'].startswith('skipped') for r in tests)} skipped, {len(failed)} failed; "
          f"rows: {sum(r['part'] != 'tests' and r['value'] is not None for r in rows)} measured, "
          f"{sum(r['part'] != 'tests' and r['value'] is None for r in rows)} without a value")
    print("\n| part | row | setting | value | unit | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['row']} | {r['setting']} | {fmt(r['value'])} | {r['unit']} | {r['note']} |")


if __name__ == "__main__":
    main()
