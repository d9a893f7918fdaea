"""A batch's samples grouped per series, in columns: the form every store writes.

The writer thread runs each envelope's samples through :meth:`SampleColumns.add`, the one
per-sample loop of the hot path. A sample whose series and timestamp text were seen before
(the common case) costs two dictionary lookups and two appends; anything else goes through
the decoder's full check, which also yields the dead-letter reason of a bad sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gateway.decode import DecodeResult, EnvelopeDecoder, NormalizedSample
from karkhana.models import SampleValue
from karkhana.storage.sqlite_schema import QUALITY_CODES, QUALITY_NAMES

_GOOD = "good"
TS_CACHE_MAX = 100_000
"""Distinct timestamp texts remembered (text -> ns); cleared when full."""


class SeriesRun:
    """The samples of one series in one batch, in arrival order."""

    __slots__ = ("asset", "bad", "signal", "ts", "unit", "values")

    def __init__(self, asset: str, signal: str) -> None:
        self.asset = asset
        self.signal = signal
        self.ts: list[int] = []
        self.values: list[SampleValue] = []
        self.bad: list[tuple[int, int]] = []
        """(index, quality code) of each sample that is not good (rare, so kept sparse)."""
        self.unit: str | None = None
        """The last unit a sample of the batch named."""

    def __len__(self) -> int:
        return len(self.ts)

    def append(self, sample: NormalizedSample) -> None:
        self.add(sample.ts_ns, sample.value, sample.quality, sample.unit)

    def add(self, ts_ns: int, value: SampleValue, quality: str, unit: str | None) -> None:
        if quality != "good":
            self.bad.append((len(self.ts), QUALITY_CODES[quality]))
        if unit is not None:
            self.unit = unit
        self.ts.append(ts_ns)
        self.values.append(value)

    def qualities(self) -> list[int] | None:
        """One quality code per sample, or None when all are good."""
        if not self.bad:
            return None
        codes = [0] * len(self.ts)
        for index, code in self.bad:
            codes[index] = code
        return codes

    def samples(self) -> Iterator[NormalizedSample]:
        codes = self.qualities()
        for i in range(len(self.ts)):
            yield self._sample(i, codes)

    def newest(self) -> NormalizedSample:
        """The sample with the latest time (the first of them when repeated)."""
        return self._sample(self.ts.index(max(self.ts)), self.qualities())

    def _sample(self, i: int, codes: list[int] | None) -> NormalizedSample:
        quality = QUALITY_NAMES[codes[i]] if codes is not None else "good"
        return NormalizedSample(
            self.asset, self.signal, self.ts[i], self.values[i], quality, self.unit
        )


def runs_from_samples(samples: Iterable[NormalizedSample]) -> list[SeriesRun]:
    runs: dict[tuple[str, str], SeriesRun] = {}
    for s in samples:
        run = runs.get((s.asset, s.signal))
        if run is None:
            run = runs[(s.asset, s.signal)] = SeriesRun(s.asset, s.signal)
        run.append(s)
    return list(runs.values())


_Appenders = tuple[Callable[[int], None], Callable[[Any], None]]
_NO_SIGNALS: dict[str, _Appenders] = {}
"""The signals of an asset not seen yet (never written to)."""
SERIES_MAX = 100_000
"""Series whose run objects are kept between batches; beyond it they are dropped."""


class SampleColumns:
    """Accumulates the samples of one batch per series (used by the writer thread only).

    The runs are kept between batches (:meth:`clear` empties them), so a series costs no
    new objects per batch.
    """

    def __init__(self, decoder: EnvelopeDecoder) -> None:
        self._decoder = decoder
        self._ts_cache: dict[str, int] = {}
        self._runs: dict[tuple[str, str], SeriesRun] = {}
        self._by_asset: dict[str, dict[str, _Appenders]] = {}
        """Asset -> signal -> that run's ``ts.append`` and ``values.append``. Nested rather
        than keyed by (asset, signal): consecutive samples mostly share the asset, which
        then needs no new lookup (comparing strings is cheaper than hashing them)."""
        self.count = 0
        """Samples added since the last :meth:`clear`."""

    def filled(self) -> list[SeriesRun]:
        """The runs holding samples."""
        return [run for run in self._runs.values() if run.ts]

    def clear(self) -> None:
        """Empty every run for the next batch."""
        if len(self._runs) > SERIES_MAX:
            self._runs.clear()
            self._by_asset.clear()
        for run in self._runs.values():
            if run.ts:
                run.ts.clear()
                run.values.clear()
                run.bad.clear()
                run.unit = None
        self.count = 0

    def add(self, result: DecodeResult) -> None:
        """Add a decoded message's samples; for a parsed envelope, check each pending sample
        and record the bad ones on ``result`` (its ``reason`` makes it a dead letter)."""
        pending = result.pending
        if pending is None:
            for sample in result.samples:
                self._run(sample.asset, sample.signal).append(sample)
            self.count += len(result.samples)
            return
        result.pending = None
        by_asset_get = self._by_asset.get
        ts_get = self._ts_cache.get
        max_ns = result.received_ns + self._decoder.max_future_ns
        errors: list[str] | None = None
        last_asset: str | None = None
        signals: dict[str, _Appenders] = _NO_SIGNALS
        last_ts: str | None = None
        ns: int | None = None
        for s in pending:
            # Hot loop: a series seen before, a timestamp text seen before, quality good
            # (msgspec returns the literal's own string object), no unit. Consecutive
            # samples mostly share asset and timestamp: those reuse the last lookup.
            asset = s.asset
            if asset != last_asset:
                signals = by_asset_get(asset, _NO_SIGNALS)
                last_asset = asset
            ts = s.ts
            if ts != last_ts:
                ns = ts_get(ts)
                if ns is not None and ns > max_ns:
                    ns = None  # too far ahead of this message: the check says so
                last_ts = ts
            appenders = signals.get(s.signal)
            if appenders is None or ns is None or s.quality is not _GOOD or s.unit is not None:
                last_asset = last_ts = None  # the check may add both: look them up again
                problem = self._add_checked(s, max_ns)
                if problem is not None:
                    if errors is None:
                        errors = []
                    index = next(i for i, x in enumerate(pending) if x is s)
                    errors.append(f"samples[{index}].{problem}")
                continue
            appenders[0](ns)
            appenders[1](s.value)
        if errors:
            self.count += len(pending) - len(errors)
            self._decoder.set_sample_reason(result, errors, len(pending))
        else:
            self.count += len(pending)

    def _add_checked(self, s: Any, max_ns: int) -> str | None:
        """Check what the hot loop could not take for granted and add the sample; or return
        the problem. The parse already checked value, quality and unit (msgspec rules)."""
        decoder = self._decoder
        pair = decoder.check_names(s.asset, s.signal)
        if isinstance(pair, str):
            return pair
        ns = self._ts_cache.get(s.ts)
        if ns is None or ns > max_ns:
            checked = decoder.check_ts(s.ts, max_ns)
            if isinstance(checked, str):
                return checked
            ns = checked
            if len(self._ts_cache) >= TS_CACHE_MAX:
                self._ts_cache.clear()
            self._ts_cache[s.ts] = ns
        self._run(*pair).add(ns, s.value, s.quality, s.unit)
        return None

    def _run(self, asset: str, signal: str) -> SeriesRun:
        key = (asset, signal)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = SeriesRun(asset, signal)
            self._by_asset.setdefault(asset, {})[signal] = (run.ts.append, run.values.append)
        return run
