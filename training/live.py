"""Redeploy's live phase: serve the new version as a canary or in the shadow, watch /metrics, decide.

The offline gate scores the new version on a held-out test set; production traffic is
another matter. So after the gate the new version becomes the model's CANDIDATE: with
--canary P it answers P% of the requests, with --shadow it scores every request beside
the served version without answering. For --watch the live per-version series on
/metrics (service/http/metrics.py) are read every few seconds and compared:

- canary: the candidate's error rate may not exceed the served version's by more than
  --max-error-rate-increase; its p99 compute time may not exceed the served version's by
  more than --max-p99-increase (relative);
- shadow: the share of items whose label differs (classifiers), or the mean absolute
  difference of the values (regressors), may not exceed --max-disagreement /
  --max-difference;
- and the candidate must have seen --min-requests requests (canary) or items (shadow).

A criterion that fails once enough traffic is in ends the watch at once with a roll back;
otherwise at the end of the period the candidate is promoted. Either way CANDIDATE is
cleared; Ctrl-C, SIGTERM or any failure clears it too and CURRENT keeps serving.

The counters on /metrics only grow while a server runs. When one goes backwards (the
server's metrics directory was emptied: a restarted server, or BentoML's shared default
emptied by another server on the host), the watch says that metrics were reset, keeps
what it had counted and counts on from the new values, instead of seeing no traffic.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

POLL_S = 5.0  # how often the watch reads /metrics
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ANSWERED_METRIC = "bentoml_service_request_total"  # BentoML's count of every answered request, /metrics itself included


def duration(text: str) -> float:
    """'10m', '30s', '1.5h', '90' (seconds) -> seconds."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = parser.add_argument_group("live phase (after the offline gate)")
    mode = live.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="P", help="serve the new version to P%% of the requests, watch, then decide")
    mode.add_argument(
        "--shadow", action="store_true", help="score every request with the new version too (answers from CURRENT), watch, decide"
    )
    live.add_argument("--watch", type=duration, default=duration("10m"), help="how long to watch the live metrics (default: %(default)ss)")
    live.add_argument(
        "--min-requests",
        type=int,
        default=100,
        help="candidate requests (canary) or items (shadow) needed to decide (default: %(default)s)",
    )
    live.add_argument(
        "--max-error-rate-increase", type=float, default=0.01, help="canary: candidate error rate minus current's (default: %(default)s)"
    )
    live.add_argument(
        "--max-p99-increase", type=float, default=0.5, help="canary: relative increase of p99 compute time (default: %(default)s)"
    )
    live.add_argument(
        "--max-disagreement", type=float, default=0.05, help="shadow, classifiers: share of labels that differ (default: %(default)s)"
    )
    live.add_argument(
        "--max-difference", type=float, default=1.0, help="shadow, regressors: mean |candidate - current| (default: %(default)s)"
    )


# ---------------------------------------------------------------- reading /metrics


@dataclass
class VersionStats:
    """One version's series, as read from /metrics at one moment (counters since the server started)."""

    ok: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] | None = None  # compute-time histogram: upper bound -> cumulative count
    shadow_items: float = 0.0
    disagreements: float = 0.0
    difference_sum: float = 0.0

    def minus(self, before: VersionStats) -> VersionStats:
        return self._combine(before, -1.0)

    def plus(self, other: VersionStats) -> VersionStats:
        return self._combine(other, 1.0)

    def _combine(self, other: VersionStats, sign: float) -> VersionStats:
        mine, theirs = self.buckets or {}, other.buckets or {}
        buckets = {le: mine.get(le, 0.0) + sign * theirs.get(le, 0.0) for le in mine.keys() | theirs.keys()}
        return VersionStats(
            self.ok + sign * other.ok,
            self.errors + sign * other.errors,
            buckets,
            self.shadow_items + sign * other.shadow_items,
            self.disagreements + sign * other.disagreements,
            self.difference_sum + sign * other.difference_sum,
        )

    def went_back_from(self, before: VersionStats) -> bool:
        """Whether a counter is lower than it was `before` (counters only grow while the server's metrics are kept)."""
        pairs = [(self.ok, before.ok), (self.errors, before.errors), (self.shadow_items, before.shadow_items)]
        pairs += [(self.disagreements, before.disagreements)]
        pairs += [((self.buckets or {}).get(le, 0.0), n) for le, n in (before.buckets or {}).items()]
        return any(now < then for now, then in pairs)

    @property
    def requests(self) -> float:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float:
        """The smallest histogram bound under which 99% of the requests' compute time fell (nan without data)."""
        ordered = sorted((self.buckets or {}).items())
        total = ordered[-1][1] if ordered else 0.0
        return next((le for le, n in ordered if n >= 0.99 * total), math.nan) if total else math.nan


@dataclass
class Reading:
    """One read of /metrics: each version's stats, and every request the server answered (BentoML's counter, all routes)."""

    versions: dict[int, VersionStats]
    answered: float = 0.0

    def went_back_from(self, before: Reading) -> bool:
        return self.answered < before.answered or any(
            self.versions[v].went_back_from(stats) for v, stats in before.versions.items() if v in self.versions
        )


def read(metrics_text: str, name: str, versions: Iterable[int]) -> Reading:
    """Each version's stats from a Prometheus text exposition (all workers summed by BentoML's collector)."""
    reading = Reading({v: VersionStats(buckets={}) for v in versions})
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == ANSWERED_METRIC:
                reading.answered += sample.value
            if labels.get("model") != name or not labels.get("version", "").isdecimal() or int(labels["version"]) not in reading.versions:
                continue
            _add(reading.versions[int(labels["version"])], sample.name, labels, sample.value)
    return reading


def _add(stats: VersionStats, metric: str, labels: dict[str, str], value: float) -> None:
    if metric == "modelserve_requests_total":
        if labels.get("outcome") == "ok":
            stats.ok += value
        elif labels.get("outcome") == "error":
            stats.errors += value
    elif metric == "modelserve_compute_seconds_bucket" and stats.buckets is not None:
        bound = float(labels["le"])
        stats.buckets[bound] = stats.buckets.get(bound, 0.0) + value
    elif metric == "modelserve_shadow_items_total":
        stats.shadow_items += value
    elif metric == "modelserve_shadow_disagreements_total":
        stats.disagreements += value
    elif metric == "modelserve_shadow_abs_difference_sum":
        stats.difference_sum += value


# ---------------------------------------------------------------- the decision


@dataclass
class Verdict:
    decided: bool  # enough traffic seen, or a criterion failed
    promote: bool
    reasons: list[str]
    resets: int = 0  # how often the service's metrics were reset during the watch


def judge(args: argparse.Namespace, current: VersionStats, candidate: VersionStats, predicts_value: bool) -> Verdict:
    """Compare the two versions' stats over the watch so far against the criteria."""
    if args.shadow:
        return _judge_shadow(args, candidate, predicts_value)
    seen = candidate.requests
    failed = []
    increase = candidate.error_rate - current.error_rate
    if candidate.errors and increase > args.max_error_rate_increase:
        failed.append(
            f"error rate {candidate.error_rate:.2%} vs {current.error_rate:.2%} (+{increase:.2%} > +{args.max_error_rate_increase:.2%})"
        )
    p99_new, p99_old = candidate.p99(), current.p99()
    if seen >= args.min_requests and p99_old > 0 and p99_new > p99_old * (1 + args.max_p99_increase):
        failed.append(f"p99 compute {p99_new * 1000:g} ms vs {p99_old * 1000:g} ms (more than +{args.max_p99_increase:.0%})")
    summary = (
        f"candidate {seen:,.0f} requests, {candidate.error_rate:.2%} errors; current {current.requests:,.0f}, {current.error_rate:.2%}"
    )
    if failed and (seen >= args.min_requests or candidate.errors >= args.min_requests / 10):
        return Verdict(True, False, [*failed, summary])
    return Verdict(seen >= args.min_requests, True, [summary])


def _judge_shadow(args: argparse.Namespace, candidate: VersionStats, predicts_value: bool) -> Verdict:
    items = candidate.shadow_items
    if not items:
        return Verdict(False, False, ["no shadow items yet"])
    if predicts_value:
        value, limit, what = candidate.difference_sum / items, args.max_difference, "mean |candidate - current|"
    else:
        value, limit, what = candidate.disagreements / items, args.max_disagreement, "labels that differ"
    line = f"{what} {value:.4g} over {items:,.0f} shadow items (limit {limit:g}); candidate errors {candidate.errors:,.0f}"
    if items >= args.min_requests and (value > limit or candidate.errors):
        return Verdict(True, False, [line])
    return Verdict(items >= args.min_requests, True, [line])


def watch(
    args: argparse.Namespace,
    read_metrics: Callable[[], str],
    name: str,
    current: int,
    candidate: int,
    predicts_value: bool,
    say: Callable[[str], None],
) -> Verdict:
    """Read /metrics every POLL_S for args.watch seconds; stop early when a criterion fails with enough traffic."""
    versions = (current, candidate)
    counter = WatchCounter(read(read_metrics(), name, versions))
    started = time.monotonic()
    verdict = Verdict(False, False, ["no traffic read yet"])
    while True:
        time.sleep(min(POLL_S, max(0.0, args.watch - (time.monotonic() - started))))
        if counter.add(read(read_metrics(), name, versions)):
            say(
                f"metrics were reset on the service (its counters went backwards: restarted, or its metrics directory emptied); "
                f"keeping what was counted ({counter.seen(candidate).requests:,.0f} candidate requests) and counting on"
            )
        verdict = judge(args, counter.seen(current), counter.seen(candidate), predicts_value)
        verdict.resets = counter.resets
        elapsed = time.monotonic() - started
        say(f"watch {elapsed:,.0f}/{args.watch:,.0f} s: {'; '.join(verdict.reasons)}")
        if (verdict.decided and not verdict.promote) or elapsed >= args.watch:
            return verdict


class WatchCounter:
    """What each version did since the watch began, across resets of the service's counters."""

    def __init__(self, first: Reading) -> None:
        self.base, self.last = first, first
        self.carried = {v: VersionStats(buckets={}) for v in first.versions}
        self.resets = 0

    def add(self, reading: Reading) -> bool:
        """Take a new reading; True when the counters went backwards since the last one (a reset)."""
        reset = reading.went_back_from(self.last)
        if reset:
            self.resets += 1
            for v in self.carried:  # what was counted up to the last reading is kept; after a reset counting starts at zero
                self.carried[v] = self.seen(v)
            self.base = Reading({v: VersionStats(buckets={}) for v in reading.versions})
        self.last = reading
        return reset

    def seen(self, version: int) -> VersionStats:
        return self.carried[version].plus(self.last.versions[version].minus(self.base.versions[version]))
