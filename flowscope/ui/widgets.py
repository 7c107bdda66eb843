"""The live screen's widgets: the status line, the rate graphs, the flows table, the new-flows
feed. Each draws from LiveState; none of them knows where ticks come from."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline, Static
from textual.widgets.data_table import CellKey, RowKey

from flowscope.model import proto_name, tcp_flags_text
from flowscope.output import human, human_rate
from flowscope.ui.cells import HEADERS, NUMERIC, PAIR_HEADERS, age_text, port_text
from flowscope.ui.state import LOSS_COUNTERS, LiveState
from flowscope.ui.view import GROUPS, Row


def padded(values: Sequence[float], width: int) -> list[float]:
    """A series for a sparkline ``width`` cells wide: the newest value at the right edge,
    zeros before the first tick (so the graph scrolls in from the right)."""
    data = list(values)
    if len(data) < width:
        data = [0.0] * (width - len(data)) + data
    return data


class StatusLine(Static):
    """Two lines: what is watched and how busy it is; then what might be missing from view
    (kernel loss counters, history writer trouble) and the view's settings."""

    DEFAULT_CSS = """
    StatusLine { height: 2; text-wrap: nowrap; text-overflow: ellipsis; padding: 0 1; }
    """

    def show(self, state: LiveState, *, paused: bool, view: str) -> None:
        s = state.sample
        p: list[str | tuple[str, str]] = []
        ifaces = " ".join(f"{n} ({m})" for n, m in state.interfaces) or "starting…"
        p.append((ifaces, "bold"))
        up = int(state.uptime)
        p.append(f"  up {up // 3600}:{up % 3600 // 60:02d}:{up % 60:02d}")
        if s is not None:
            p += ["  ", (human_rate(s.bps), "bold $accent")]
            p.append(f"  {human(s.pps)} pkt/s  {s.active_flows:,} flows  ")
            burst = "bold reverse $warning" if state.burst else ""
            p.append((f"{state.new_per_second:,.0f} new/s", burst))
        if paused:
            p += ["  ", (" PAUSED ", "bold reverse $warning")]
        p.append("\n")
        for name in LOSS_COUNTERS:
            n = state.totals.get(name, 0)
            p += [(f"{name} {n:,}", "bold $warning" if n else "$text-muted"), "  "]
        w = state.writer
        if w is None:
            p.append(("no history (--no-db)", "$text-muted"))
        else:
            p.append((f"behind {w.backlog:,}", "bold $warning" if w.backlog else "$text-muted"))
            p.append("  ")
            p.append((f"dropped {w.dropped:,}", "bold $error" if w.dropped else "$text-muted"))
        p.append("  │ " + view)
        self.update(Content.assemble(*p))


class RateGraph(Widget):
    """Total bit rate over the last minutes, and the selected row's under it."""

    DEFAULT_CSS = """
    RateGraph { height: auto; }
    RateGraph > Horizontal { height: 1; }
    RateGraph Label { width: 26; }
    RateGraph Sparkline { width: 1fr; height: 1; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("total", id="total-label")
            yield Sparkline([], id="total-graph")
        with Horizontal():
            yield Label("", id="row-label")
            yield Sparkline([], id="row-graph")

    def show(self, state: LiveState, selected: Row | None, selected_name: str) -> None:
        total = self.query_one("#total-graph", Sparkline)
        width = max(total.size.width, 10)
        total.data = padded(state.bps, width)
        rate = human_rate(state.sample.bps) if state.sample else "-"
        self.query_one("#total-label", Label).update(f"total    {rate:>11}")
        row_graph = self.query_one("#row-graph", Sparkline)
        label = self.query_one("#row-label", Label)
        if selected is None:
            row_graph.data = [0.0] * width
            label.update(Content.styled("(no row)", "$text-muted"))
            return
        row_graph.data = padded(state.row_series(selected.key), width)
        label.update(Content.assemble(("selected", "bold"), f" {human_rate(selected.bps):>11}"))


class FlowTable(DataTable[Text]):
    """The flows table, changed in place by row key every tick: cells whose text changed
    are updated, rows that left are removed, new rows added, then the rows are put in the
    wanted order. It is never cleared and refilled, so the cursor and scroll stay put."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.columns_shown: tuple[str, ...] = ()
        self._texts: dict[str, list[str]] = {}
        self.order: list[str] = []

    def set_columns(
        self,
        columns: tuple[str, ...],
        widths: dict[str, int],
        group: str,
        sort: str,
        descending: bool,
    ) -> None:
        """Rebuild the columns (and drop the rows) when the column set or widths change;
        otherwise only mark the sorted column."""
        want = (columns, tuple(widths.get(c, 0) for c in columns))
        have = (self.columns_shown, tuple(c.width for c in self.columns.values()))
        if want != have:
            self.clear(columns=True)
            self._texts.clear()
            self.order = []
            for c in columns:
                self.add_column(self._label(c, group, sort, descending), width=widths[c], key=c)
            self.columns_shown = columns
        else:
            for c in columns:
                self.columns[c].label = self._label(c, group, sort, descending)  # type: ignore[index]
            self.refresh()

    @staticmethod
    def _label(column: str, group: str, sort: str, descending: bool) -> Text:
        title = (PAIR_HEADERS if group == "pair" else {}).get(column, HEADERS[column])
        if column == sort:
            title += "▼" if descending else "▲"
        style = "bold" if column == sort else ""
        return Text(title, style=style, justify="right" if column in NUMERIC else "left")

    def apply(self, rows: Sequence[Row], texts: Sequence[list[str]], frozen: bool) -> None:
        """Show ``rows`` (with their cell ``texts``) in this order, or, when ``frozen``, in
        the order rows already had (new ones at the end)."""
        selected = self.selected_key
        keys = [r.key for r in rows]
        wanted = set(keys)
        self._drop_rows([k for k in self._texts if k not in wanted])
        cols = self.columns_shown
        for key, cells in zip(keys, texts, strict=True):
            old = self._texts.get(key)
            if old is None:
                self.add_row(*(self._cell(c, t) for c, t in zip(cols, cells, strict=True)), key=key)
            else:
                for c, o, t in zip(cols, old, cells, strict=True):
                    if o != t:
                        self.update_cell(key, c, self._cell(c, t))
            self._texts[key] = cells
        if frozen:
            kept = [k for k in self.order if k in wanted]
            known = set(kept)
            keys = kept + [k for k in keys if k not in known]
        self._reorder(keys)
        if selected is not None and selected in self._texts:
            index = self.get_row_index(selected)
            if index != self.cursor_row:
                self.move_cursor(row=index, animate=False)

    @staticmethod
    def _cell(column: str, text: str) -> Text:
        return Text(text, justify="right" if column in NUMERIC else "left", no_wrap=True)

    def _drop_rows(self, keys: list[str]) -> None:
        """Remove many rows at once. DataTable.remove_row rebuilds the whole row index for
        each row it removes, which is quadratic when most of the top rows change (a new sort
        column, a burst of new flows): measured, that was most of a tick's CPU time. Here the
        rows go first and the index is rebuilt once; _reorder then sets the final order."""
        if not keys:
            return
        for key in keys:
            row_key = RowKey(key)
            for column_key in self._data.get(row_key, {}):
                self._updated_cells.discard(CellKey(row_key, column_key))
            del self.rows[row_key]
            del self._data[row_key]
            del self._texts[key]
        self._row_locations = TwoWayDict({rk: i for i, rk in enumerate(self.rows)})
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        self.hover_coordinate = self.hover_coordinate
        self._update_count += 1
        self.refresh(layout=True)

    def _reorder(self, keys: list[str]) -> None:
        # DataTable.sort() reorders by cell values; the order here comes from the arrays, so
        # set the row positions the same way sort() does. A RowKey equals (and hashes as) its
        # string, so the keys need not be looked up among the rows.
        self.order = keys
        self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(keys)})
        self._update_count += 1
        self.refresh()

    @property
    def selected_key(self) -> str | None:
        """The row key under the cursor, if any."""
        if not self.row_count or not self.order:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # a cursor left beyond the last row for a moment
            return None


class NewFlowsFeed(Static):
    """New flows from the ring buffer, newest first, under a line with their rate and a
    sparkline of it; a burst turns the title line into a warning."""

    DEFAULT_CSS = """
    NewFlowsFeed { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def show(self, state: LiveState, name_of: Callable[[str], str | None] | None) -> None:
        height = max(self.size.height, 2)
        width = max(self.size.width, 20)
        rate = state.new_per_second
        style = "bold reverse $warning" if state.burst else "bold"
        head = f" new flows {rate:,.0f}/s "
        peak = f" peak {max(state.new_flows, default=0.0):,.0f}/s "
        bars = _bars(list(state.new_flows), max(width - len(head) - len(peak) - 1, 0))
        p: list[str | tuple[str, str]] = [(head, style), (peak, "$text-muted"), (bars, "$warning")]
        for ev in list(state.feed)[: height - 1]:
            k = ev.key
            src = (name_of(k.src) if name_of else None) or k.src
            dst = (name_of(k.dst) if name_of else None) or k.dst
            when = time.strftime("%H:%M:%S", time.gmtime(ev.time))
            sport = port_text(k.sport, k.proto, named=False)
            p += ["\n", (when + " ", "$text-muted"), f"{proto_name(k.proto):<5} "]
            p.append(f"{src}:{sport} → {dst}:{port_text(k.dport, k.proto)}")
            if ev.map_full:
                p.append((" MAP FULL", "bold $error"))
        self.update(Content.assemble(*p))


_BARS = " ▁▂▃▄▅▆▇█"


def _bars(values: list[float], width: int) -> str:
    """A one-line sparkline as text (the feed's title line has no room for a widget)."""
    if width <= 0:
        return ""
    vals = values[-width:]
    top = max(vals, default=0.0) or 1.0
    chars = "".join(_BARS[min(int(v / top * 8 + 0.999), 8)] if v > 0 else " " for v in vals)
    return chars.rjust(width)


def describe_row(row: Row, group: str) -> list[tuple[str, str]]:
    """Every field of a row as (name, value) pairs, for the detail screen."""
    out: list[tuple[str, str]] = [("grouping", GROUPS[group])]
    if row.src is not None:
        out.append(("host A" if group == "pair" else "source", row.src))
    if row.dst is not None:
        out.append(("host B" if group == "pair" else "destination", row.dst))
    if row.sport is not None:
        out.append(("source port", port_text(row.sport, row.proto)))
    if row.dport is not None:
        out.append(("destination port", port_text(row.dport, row.proto)))
    if row.proto is not None:
        out.append(("protocol", f"{proto_name(row.proto)} ({row.proto})"))
    if row.vlan is not None:
        out.append(("VLAN", str(row.vlan) if row.vlan else "untagged"))
    if row.direction is not None:
        out.append(("direction", "ingress" if row.direction == 0 else "egress"))
    out += [
        ("bit rate", human_rate(row.bps)),
        ("packet rate", f"{human(row.pps)} pkt/s"),
        ("bytes", f"{row.bytes:,}"),
        ("packets", f"{row.packets:,}"),
        ("age", age_text(row.age)),
        ("TCP flags", tcp_flags_text(row.tcp_flags)),
    ]
    if group != "flow":
        out.append(("flows", f"{row.flows:,}"))
    if row.out is not None:
        out.append(("bytes A→B", f"{row.out:,}"))
    if row.in_ is not None:
        out.append(("bytes B→A", f"{row.in_:,}"))
    return out
