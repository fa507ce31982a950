"""One self-contained HTML page: inline CSS, figures as base64 data: URIs, no script, no link out."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import escape

NUMERIC = re.compile(r"^(-?[\d.]+( ± [\d.]+)?( s| MB| min)?|\[.*\]|< 0\.001|-)$")

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #1d2330; background: #ffffff; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 3px solid #2c5d8f; padding-bottom: .3em; }
h2 { color: #2c5d8f; margin-top: 2em; border-bottom: 1px solid #c9d3df; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #c9d3df; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #eef2f7; } td.num { text-align: right; white-space: nowrap; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #e3e8ee; }
figcaption, .note { color: #4a5566; font-size: .92em; }
.caption { background: #f6f8fb; border-left: 4px solid #2c5d8f; padding: .5em .8em; margin: .6em 0; }
.verdict { font-size: 1.08em; font-weight: 600; border-left: 4px solid #8f2c5d; padding: .4em .8em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1.2em; }
dl.facts dt { font-weight: 600; }
"""


@dataclass
class Section:
    heading: str
    parts: list[str] = field(default_factory=list)

    def text(self, sentence: str) -> Section:
        self.parts.append(f"<p>{escape(sentence)}</p>")
        return self

    def lead(self, sentence: str) -> Section:
        """The one sentence a reader must not miss (the verdict), set apart."""
        self.parts.append(f'<p class="verdict">{escape(sentence)}</p>')
        return self

    def caption(self, sentence: str) -> Section:
        """A plain-language sentence that tells a clinician how to read what follows."""
        self.parts.append(f'<p class="caption">{escape(sentence)}</p>')
        return self

    def figure(self, png: bytes, caption: str) -> Section:
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{escape(caption)}</figcaption></figure>")
        return self

    def table(self, header: list[str], rows: list[list[str]]) -> Section:
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def facts(self, items: list[tuple[str, str]]) -> Section:
        body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
        self.parts.append(f'<dl class="facts">{body}</dl>')
        return self


def _cell(text: str) -> str:
    numeric = bool(NUMERIC.match(text))  # numbers, intervals and p-values line up on the right
    return f'<td class="num">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"


def page(title: str, sections: list[Section]) -> str:
    body = "\n".join(f"<section><h2>{escape(s.heading)}</h2>{''.join(s.parts)}</section>"
                     for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
