"""A bench's results as data, and their Markdown: headings, paragraphs and tables whose cells
are numbers until they are rendered. `scripts/bench` writes the data as JSON
(`target/bench/results.json`, or `--json FILE`) and renders the Markdown from it; `scripts/bench
--render FILE` renders a kept JSON file again.
"""
import json
import math


class Report:
    """The items of a report, in order."""

    def __init__(self):
        self.items = []

    def heading(self, text, level=2):
        self.items.append({"kind": "heading", "level": level, "text": text})

    def text(self, text):
        self.items.append({"kind": "text", "text": text})

    def table(self, columns, rows):
        """`columns`: (name, format) pairs, the format a format spec for numbers ('.0f', '.2f')
        or '' for cells shown as they are; `rows`: lists of cells, numbers kept as numbers."""
        self.items.append({
            "kind": "table",
            "columns": [name for name, _ in columns],
            "formats": [fmt for _, fmt in columns],
            "rows": [list(r) for r in rows],
        })

    def extend(self, other):
        self.items.extend(other.items)

    def to_json(self):
        return json.dumps({"items": self.items}, indent=1, allow_nan=True)


def load(text):
    """The items of a report written by `Report.to_json`."""
    return json.loads(text)["items"]


def cell(value, fmt):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and fmt:
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        return format(value, fmt)
    return str(value)


def render(items):
    """The Markdown of a report's items: one block each, a blank line between."""
    blocks = []
    for it in items:
        if it["kind"] == "heading":
            blocks.append(f"{'#' * it['level']} {it['text']}")
        elif it["kind"] == "text":
            blocks.append(it["text"])
        elif it["kind"] == "table":
            lines = ["| " + " | ".join(it["columns"]) + " |", "|" + "---|" * len(it["columns"])]
            for row in it["rows"]:
                cells = [cell(v, f) for v, f in zip(row, it["formats"])]
                lines.append("| " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
