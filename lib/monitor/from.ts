// Apart from the monitor (which loads kafkajs), so that the CLI can parse --from without loading the client.

/**
 * Parses `--from`: an ISO date/time, epoch milliseconds, a duration before now (`90s`, `15m`, `2h`, `1d`), or
 * `earliest`/`beginning`. Returns undefined for an unparseable value, or a time no Date holds.
 */
export function parseFrom(value: string, now: number = Date.now()): number | 'earliest' | undefined {
  const v = value.trim();
  if (/^(earliest|beginning)$/i.test(v)) return 'earliest';
  if (/^\d{12,}$/.test(v)) return clockTime(Number(v));
  const rel = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)$/i.exec(v);
  if (rel) {
    const unit = { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[rel[2]!.toLowerCase() as 's' | 'm' | 'h' | 'd'];
    return clockTime(now - Number(rel[1]) * unit);
  }
  const t = Date.parse(v);
  return Number.isFinite(t) ? t : undefined;
}

/** `t`, when a Date can hold it (|t| <= 8.64e15 ms); undefined otherwise (10^14 days ago is no time). */
function clockTime(t: number): number | undefined {
  return Number.isFinite(new Date(t).getTime()) ? t : undefined;
}
