"""Fill docs/reproduction.md's generated blocks from the reports under docs/reproduction/.

    python docs/reproduction/assemble.py

Between `<!-- BEGIN NAME -->` and `<!-- END NAME -->` it writes the main table of
docs/reproduction/NAME/report.md (its caption, the table, and the lines the report adds under it)
and the report's opening line (data, budget, trials), as the report generated them: nothing in
those blocks is typed by hand.
"""
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "reproduction.md"


def main_table(report: Path) -> str:
    lines = report.read_text().splitlines()
    setting = next(line for line in lines[1:] if line.strip())
    start = next(i for i, line in enumerate(lines) if line.startswith("## "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("Files:", "## ")))
    body = "\n".join(lines[start + 1:end]).strip()
    return f"*{setting}*\n\n{body}"


def assemble(doc: Path = DOC) -> None:
    text = doc.read_text()

    def fill(match):
        name = match.group(1)
        return f"<!-- BEGIN {name} -->\n{main_table(HERE / name / 'report.md')}\n<!-- END {name} -->"

    doc.write_text(re.sub(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", fill, text, flags=re.S))


if __name__ == "__main__":
    assemble()
    print(f"filled {DOC}")
