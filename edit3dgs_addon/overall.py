"""One progress bar for a whole edit: its stages (render, edit, refit per round, then save) as one fraction,
with the stage in words and a time estimate for the whole job (no bpy).

The backend reports each stage's own count (``render 3/8``, ``refit 120/320``);
the share of the job each stage takes comes from the last edit with the same
editor on this machine (measured), else from ``DEFAULT_SHARES``.
"""

from __future__ import annotations

import re
import time

KINDS = ("render", "edit", "refit", "finish")
_ROUND = re.compile(r"refit (\d+)/(\d+)")
# A stage whose time is paid once, not by every edit (the backend's first compile of the diffusion model at a
# size: "edit (compiling the diffusion model, once per image size: 1-2 min)"): left out of the measured shares.
_ONE_OFF = re.compile(r"\(compiling\b")
# Share of one round's time per stage, and of the whole job for the final save/export (measured on CPU).
DEFAULT_SHARES = {"region": {"render": 0.15, "edit": 0.05, "refit": 0.75, "finish": 0.05},
                  "ip2p": {"render": 0.05, "edit": 0.60, "refit": 0.30, "finish": 0.05}}


def stage_kind(stage: str) -> str | None:
    s = stage.split(" ")[0] if stage else ""
    if s in ("render", "edit", "refit"):
        return s
    if s in ("save", "export"):
        return "finish"
    return None


class Overall:
    """Feed ``update(stage, done, total)`` as progress arrives; read ``fraction`` and ``text()``.

    The job is a sequence of segments: render, edit and refit in the first round; in later rounds
    a refit only, unless ``reedit`` (the backend's ``reedit_each_round``: render and edit again
    every round). A refit names its round (``refit 2/3``); a render after a refit starts the next
    round."""

    def __init__(self, rounds: int = 1, editor: str = "region", shares: dict | None = None,
                 now: float | None = None, reedit: bool = False):
        self.rounds = max(1, int(rounds))
        self.reedit = bool(reedit)
        base = dict(DEFAULT_SHARES.get(editor, DEFAULT_SHARES["region"]))
        base.update(shares or {})
        finish = min(max(base["finish"], 0.0), 0.5)
        self.segments = [(k, r) for r in range(self.rounds) for k in KINDS[:3]
                         if k == "refit" or r == 0 or self.reedit]
        weight = sum(base[k] for k, _ in self.segments) or 1.0
        # each segment's share of the job: all segments plus the finish make 1
        self.shares = {k: base[k] / weight * (1.0 - finish) for k in KINDS[:3]}
        self.shares["finish"] = finish
        self.started = time.monotonic() if now is None else now
        self.round, self.kind, self.stage = 0, None, ""
        self.done = self.total = 0
        self.kind_started = self.started
        self.spent = {k: 0.0 for k in KINDS}  # seconds per stage kind (for the next job's shares)
        self.one_off = {k: 0.0 for k in KINDS}  # of which in one-off stages (a first compile): not shares
        self.stage_started = self.started
        self.best = 0.0

    def update(self, stage: str, done: int, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        kind = stage_kind(stage)
        if kind is None:
            return
        if stage != self.stage:
            if self.kind is not None and _ONE_OFF.search(self.stage):
                self.one_off[self.kind] += now - self.stage_started
            self.stage_started = now
        if kind != self.kind:
            if self.kind is not None:  # (the first stage's time counts from the start: loading is rendering's)
                self.spent[self.kind] += now - self.kind_started
                self.kind_started = now
                if KINDS.index(kind) < KINDS.index(self.kind) and self.round < self.rounds - 1:
                    self.round += 1  # render again after the refit: the next round
            self.kind = kind
        if kind == "refit":
            m = _ROUND.match(stage)
            if m:
                self.round = min(self.rounds - 1, max(0, int(m.group(1)) - 1))
        self.stage, self.done, self.total = stage, int(done), int(total)

    @property
    def fraction(self) -> float:
        if self.kind is None:
            return 0.0
        if self.kind == "finish":
            f = 1.0 - self.shares["finish"] + self.shares["finish"] * self._part()
        else:
            here = (self.kind, self.round)
            if here not in self.segments:   # e.g. a render in a later round without reedit: count it as the refit's
                here = ("refit", self.round)
            i = self.segments.index(here)
            f = sum(self.shares[k] for k, _ in self.segments[:i]) + self.shares[self.kind] * self._part()
        self.best = max(self.best, min(f, 1.0))  # never goes back (a stage restarting its count)
        return self.best

    def _part(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def seconds_left(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        f, elapsed = self.fraction, now - self.started
        if f < 0.03 or elapsed < 2.0 or f >= 1.0:
            return None
        return elapsed / f * (1.0 - f)

    def text(self, now: float | None = None) -> str:
        """'refit 120/320 · round 1/2 · 40 %, about 30 s left' (the bar's text)."""
        if self.kind is None:
            return self.stage or "starting"
        parts = [f"{self.stage} {self.done}/{self.total}" if self.total else self.stage]
        if self.rounds > 1 and self.kind != "finish" and "/" not in self.stage:
            parts.append(f"round {self.round + 1}/{self.rounds}")
        text = " · ".join(parts) + f" · {round(100 * self.fraction)} %"
        left = self.seconds_left(now)
        if left is not None:
            text += f", about {round(left)} s left" if left < 90 else f", about {round(left / 60)} min left"
        return text

    def measured_shares(self, now: float | None = None) -> dict | None:
        """Each stage kind's share of this job's time (per segment for render/edit/refit), for the next job."""
        now = time.monotonic() if now is None else now
        spent = dict(self.spent)
        if self.kind is not None:
            spent[self.kind] += now - self.kind_started
            if _ONE_OFF.search(self.stage):
                spent[self.kind] -= now - self.stage_started
        for k in KINDS:   # a first compile's minutes say nothing about the next edit
            spent[k] = max(0.0, spent[k] - self.one_off[k])
        if any(spent[k] <= 0 for k in ("render", "refit")):
            return None
        # per segment (a render, an edit, a refit of one round), as the shares are used
        for k in KINDS[:3]:
            spent[k] /= max(1, sum(1 for kind, _ in self.segments if kind == k))
        total = sum(spent.values())
        return {k: v / total for k, v in spent.items()}
