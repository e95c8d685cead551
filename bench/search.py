"""The loss-limited rate search every searching benchmark shares (`sfc`, `multinode`, `e2e`,
`state`), and the host's CPU placement it keeps apart.

A search is RFC 2544 style: the unpaced capacity (the better of two runs), then a binary
search below it, a rate passing when one of `TRIES` trials loses under LOSS_LIMIT.

This VM's host moves its two vCPUs every few seconds between a placement that shares a cache
(a cache line's round trip 57-210 ns) and one that does not (314-470 ns), and a rate that
hands packets between the two CPUs follows it: the empty SFC runs at 37 Mpps in the first
and 14 in the second (docs/dataplane.md). A search whose trials straddle both finds neither.
So each trial is tagged with the placement seen just before and just after it
(bench/common.py cpu_link: "near" or "far"); a trial the host moved the CPUs during is run
again, and each placement has its own searches, advanced by the trials run while the host
has the CPUs that way (a probe that cannot tell is taken again). Once one placement has its
searches, the search waits (PATIENCE) for the other if a trial ran whole in it or it is
wanted. The figure is the median of one placement's
searches: "near" when it finished one (the placement a DPDK deployment gives a pipeline's
cores: sharing a cache), else "far"; `by_link` gives both, so figures compare like with
like.
"""
from __future__ import annotations

import statistics
import time

from .common import BenchError, cpu_link

LOSS_LIMIT = 0.001
SEARCHES = 3  # independent searches per figure: the figure is their median
TRIES = 2     # trials per search point: it passes if one of them does
STEPS = 5     # halvings per search: to capacity/64
LINKS = ("near", "far")  # the headline's preference (see above)
PATIENCE = 2.0  # once a placement has its searches, wait up to this times as long in all
MAX_TRIALS_PER_SEARCH = 60  # a host that never keeps a placement for a trial: give up
MAX_UNKNOWN_PROBES = 100    # placement probes in a row that could not tell: give up


def trials_summary(values: list[float]) -> dict:
    """A searched figure's trials as the bench JSON gives them (DESIGN §5, X_mpps_trials)."""
    values = [round(v, 3) for v in values]
    lo, hi = min(values), max(values)
    return {"values": values, "median": statistics.median_low(values), "min": lo, "max": hi,
            "spread": round(hi / lo, 3) if lo else None}


def _passes(mpps: float, tries: int, loss_key: str):
    """Up to `tries` trials at `mpps` (a host pause longer than the emulated input queue
    holds loses packets at any rate): the passing trial or None."""
    for _ in range(tries):
        trial = yield mpps
        if trial[loss_key] < LOSS_LIMIT:
            return trial
    return None


def _one_search(steps: int, loss_key: str, tries: int):
    """One search as a generator: yields the rate (Mpps, 0: unpaced) of each trial it needs,
    is sent that trial's result, returns (capacity, rate, passing trial or None). Capacity
    itself first, then its upper half (where the rate lies unless the input loses packets at
    loads the SFC carries), then the lower half if nothing there passed."""
    capacity = 0.0
    for _ in range(2):
        capacity = max(capacity, (yield 0.0)["mpps"])
    trial = yield from _passes(capacity, tries, loss_key)
    if trial:
        return capacity, capacity, trial
    # the upper half's floor is assumed; the lower half (twice as wide) takes a step more
    for lo, hi, halvings in ((capacity / 2, capacity, steps), (0.0, capacity / 2, steps + 1)):
        best, best_trial = 0.0, None
        for _ in range(halvings):
            mid = (lo + hi) / 2
            trial = yield from _passes(mid, tries, loss_key)
            if trial:
                lo, best, best_trial = mid, mid, trial
            else:
                hi = mid
        if best_trial is not None:
            return capacity, best, best_trial
    return capacity, 0.0, None


def _one_unpaced():
    """One unpaced run as a search() generator: its rate is the figure."""
    trial = yield 0.0
    return trial["mpps"], trial["mpps"], trial


def placed(call, before: str | None = None) -> tuple:
    """call() between two placement probes (`before`: the one seen just before, if known):
    (the placement it ran in or None if the host moved the CPUs during it or a probe could
    not tell, the placement after it, the round trip then in ns, what call() returned)."""
    if before is None:
        before, _ = cpu_link()
    result = call()
    after, ns = cpu_link()
    return (after if before is not None and after == before else None), after, ns, result


def linked_run(rig, pps: float, seconds: float, before: str | None = None,
               **kw) -> tuple[str | None, dict | None]:
    """rig.run_at() between two placement probes (placed()): (the placement after it, the
    trial or None if it did not run whole in one). The trial gives its placement ("link",
    "link_ns")."""
    ran_in, after, ns, trial = placed(lambda: rig.run_at(pps, seconds, **kw), before)
    if ran_in is None:
        return after, None
    trial["link"], trial["link_ns"] = after, ns
    return after, trial


def search(rig, seconds: float, steps: int = STEPS, loss_key: str = "loss",
           searches: int = SEARCHES, tries: int = TRIES, unpaced: bool = False,
           want: tuple = ()) -> dict:
    """`searches` independent searches per placement seen, each below its own capacity
    measurement (one the host paused would cap every search). {"mpps": the headline
    placement's median, "link": that placement, "trial": its median search's passing trial,
    "capacity": the highest capacity measured in it, "trials": trials_summary() of its
    searches, "by_link": {link: {"mpps", "trials", "capacity"}} for every placement that
    finished a search, "moved": trials rerun because the host moved the CPUs}. `unpaced`:
    each "search" is one unpaced run instead (`bench chain`: the median of runs). `want`:
    placements to wait for as for one seen (those of a figure this one is compared with)."""
    found: dict = {}
    running: dict = {}
    ran: set = set()  # placements a trial ran whole in (seen: the search waits for them)
    moved = trials = unknown = 0
    start, first_done = time.monotonic(), None
    link, _ = cpu_link()
    while True:
        if trials > MAX_TRIALS_PER_SEARCH * searches * len(LINKS):
            if found:
                break
            raise BenchError(f"the host moved the benchmark's CPUs apart or together during "
                             f"{moved} of {trials} trials: no search finished")
        if link is None:  # the probe could not tell (it timed out three times): again
            unknown += 1
            if unknown > MAX_UNKNOWN_PROBES:
                raise BenchError("the CPU placement probe (bench/native/cpulink.h) timed out "
                                 f"{unknown} times in a row")
            time.sleep(0.01)
            link, _ = cpu_link()
            continue
        unknown = 0
        if len(found.get(link, ())) >= searches:  # done here: wait for the other placement
            time.sleep(0.05)
            link, _ = cpu_link()
        elif link not in running:
            gen = _one_unpaced() if unpaced else _one_search(steps, loss_key, tries)
            running[link] = (gen, next(gen))
        if link in running:
            gen, rate = running[link]
            ran_in, link, trial = link, *linked_run(rig, rate * 1e6, seconds, link)
            trials += 1
            if trial is None:
                moved += 1
                continue
            ran.add(ran_in)
            try:
                running[ran_in] = (gen, gen.send(trial))
            except StopIteration as done:
                found.setdefault(ran_in, []).append(done.value)
                del running[ran_in]
        complete = [k for k in found if len(found[k]) >= searches]
        if complete and first_done is None:
            first_done = time.monotonic()
        seen = set(found) | ran | set(want)
        if complete and (len(complete) == len(seen)
                         or time.monotonic() - start > PATIENCE * (first_done - start)):
            break
    by_link = {}
    for link, results in found.items():
        by_link[link] = {"mpps": round(statistics.median_low([r for _, r, _ in results]), 3),
                         "trials": trials_summary([r for _, r, _ in results]),
                         "capacity": round(max(c for c, _, _ in results), 3)}
    link = next((k for k in LINKS if k in found), next(iter(found)))
    results = found[link]
    median = statistics.median_low([r for _, r, _ in results])
    return {"mpps": median, "link": link, "by_link": by_link, "moved": moved,
            "trial": next(t for _, r, t in results if r == median),
            "capacity": max(c for c, _, _ in results),
            "trials": trials_summary([r for _, r, _ in results])}


def link_ratios(a: dict, b: dict) -> dict:
    """{placement: a's figure over b's} for each placement both were searched in (two
    search() by_link dicts)."""
    return {link: round(a[link]["mpps"] / b[link]["mpps"], 3)
            for link in a if link in b and b[link]["mpps"]}


def same_link_ratio(a: dict, b: dict, fallback: tuple | None = None) -> tuple:
    """a's figure over b's (two search() by_link dicts) in the first placement (LINKS order)
    both have: (ratio, link). When they share none: the `fallback` (a's headline, b's
    headline) compared as (ratio, "mixed"), or (None, None) without one."""
    ratios = link_ratios(a, b)
    for link in LINKS + tuple(ratios):  # (a 1-CPU machine's "one")
        if link in ratios:
            return ratios[link], link
    if fallback:
        return (round(fallback[0] / fallback[1], 3) if fallback[1] else None), "mixed"
    return None, None


def same_link(a: str | None, b: str | None) -> str:
    """The placement two figures were both measured in, or "mixed"."""
    return a if a == b and a in LINKS + ("one",) else "mixed"
