#!/usr/bin/env python3
"""Checks a `moemla conformance --html` page against the JSON report it embeds.

Usage: check-html-report.py PAGE.html [--rendered] [--json REPORT.json]

PAGE.html is the page as written, or the DOM a browser dumped after running its script
(`chromium --headless --dump-dom`): then pass --rendered, and the script must have run
(the body marked data-ready, every row counted as shown). Checks that the matrix has one
row per case and one column per backend, every cell's status is the JSON result's, the
per-backend passed/total footer and the summary's counts are the JSON's, and the
provenance block shows the golden set hash and the commit. With --json, the embedded
report must also equal that file. Standard library only. Exit 0 when all match, 1 with
the first difference otherwise.
"""

import argparse
import json
import sys
from html.parser import HTMLParser


class Page(HTMLParser):
    """Collects the matrix cells, the footer, the summary, the provenance text and the
    embedded JSON."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, attrs) of open elements
        self.rows = []  # (case, op, dtype, {backend: status})
        self.header = []  # backends in the matrix header
        self.footer = {}  # backend -> (passed, total)
        self.summary = None
        self.body = {}
        self.shown = None
        self.provenance = []
        self.json_text = None
        self._json_parts = None
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "table" and a.get("id"):
            self._section = a["id"]
        elif tag in ("thead", "tbody", "tfoot") and self._section == "matrix":
            self._part = tag
        elif tag == "tr" and "case" in (a.get("class") or "").split():
            self.rows.append((a.get("data-case"), a.get("data-op"), a.get("data-dtype"), {}))
        elif tag in ("th", "td") and self._section == "matrix" and "data-backend" in a:
            part = getattr(self, "_part", None)
            if part == "thead":
                self.header.append(a["data-backend"])
            elif part == "tbody":
                self.rows[-1][3][a["data-backend"]] = a.get("data-status")
            elif part == "tfoot":
                self.footer[a["data-backend"]] = (int(a["data-passed"]), int(a["data-total"]))
        elif tag == "p" and a.get("id") == "summary":
            self.summary = a
        elif tag == "p" and a.get("id") == "shown":
            self.shown = a
        elif tag == "script" and a.get("id") == "report-json":
            self._json_parts = []
        if tag not in ("meta", "input", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "script" and self._json_parts is not None:
            self.json_text = "".join(self._json_parts)
            self._json_parts = None
        if tag == "table":
            self._section = None
        while self.stack:
            if self.stack.pop() == tag:
                break

    def handle_data(self, data):
        if self._json_parts is not None:
            self._json_parts.append(data)
        elif self._section == "provenance":
            self.provenance.append(data)


def fail(message):
    print(f"check-html-report: {message}")
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page")
    ap.add_argument("--rendered", action="store_true", help="the page is a DOM dumped after its script ran")
    ap.add_argument("--json", help="the JSON report the page must embed")
    args = ap.parse_args()
    page = Page()
    with open(args.page, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    if page.json_text is None:
        fail("no <script type=application/json id=report-json> in the page")
    report = json.loads(page.json_text)
    if args.json:
        with open(args.json, encoding="utf-8") as f:
            if json.load(f) != report:
                fail(f"the embedded report differs from {args.json}")

    backends = [b["name"] for b in report["backends"]]
    if page.header != backends:
        fail(f"matrix columns {page.header}, JSON backends {backends}")
    want = {}
    for r in report["results"]:
        want.setdefault(r["case"], {})[r["backend"]] = r["status"]
    got = {}
    for case, _op, _dtype, cells in page.rows:
        if case in got:
            fail(f"case {case!r} has two rows")
        got[case] = {b: s for b, s in cells.items() if s}
    if sorted(got) != sorted(want):
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        fail(f"rows differ: {len(got)} rows, {len(want)} cases in the JSON; missing {missing}, extra {extra}")
    for case, cells in want.items():
        if got[case] != cells:
            fail(f"case {case!r}: cells {got[case]}, JSON {cells}")
    for b in report["backends"]:
        s = b["summary"]
        total = s["passed"] + s["failed"] + s["errors"] + s["skipped"] + s["mistrusted"]
        if page.footer.get(b["name"]) != (s["passed"], total):
            fail(f"backend {b['name']!r}: footer {page.footer.get(b['name'])}, JSON {(s['passed'], total)}")
    if page.summary is None:
        fail("no summary paragraph")
    s = report["summary"]
    for key in ("passed", "failed", "errors", "skipped", "mistrusted"):
        if int(page.summary.get(f"data-{key}", -1)) != s[key]:
            fail(f"summary {key}: page {page.summary.get(f'data-{key}')}, JSON {s[key]}")
    if page.summary.get("data-outcome") != report["outcome"]:
        fail(f"outcome: page {page.summary.get('data-outcome')}, JSON {report['outcome']}")
    text = " ".join(page.provenance)
    golden = report["run"].get("golden", {}).get("set_sha256", "")
    for fact in (golden, report["run"].get("git_commit", "")):
        if not fact or fact not in text:
            fail(f"the provenance block does not show {fact!r}")
    if args.rendered:
        if page.body.get("data-ready") != "1":
            fail("the page's script did not run (body has no data-ready)")
        if page.shown is None or page.shown.get("data-shown") != str(len(page.rows)):
            fail(f"the script shows {page.shown and page.shown.get('data-shown')} rows of {len(page.rows)}")
    print(
        f"check-html-report: {args.page}: {len(page.rows)} rows x {len(backends)} backends, "
        f"statuses, counts and provenance match the JSON"
        + (" (rendered: script ran)" if args.rendered else "")
    )


if __name__ == "__main__":
    main()
