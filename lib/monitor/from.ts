// Apart from the monitor (which loads kafkajs), so that the CLI can parse --from without loading the client.

/**
 * Parses `--from`: an ISO date/time, epoch milliseconds, a duration before now (`90s`, `15m`, `2h`, `1d`), or
 * `earliest`/`beginning`. Returns undefined for an unparseable value.
 */
export function parseFrom(value: string, now: number = Date.now()): number | 'earliest' | undefined {
  const v = value.trim();
  if (/^(earliest|beginning)$/i.test(v)) return 'earliest';
  if (/^\d{12,}$/.test(v)) return Number(v);
  const rel = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)$/i.exec(v);
  if (rel) {
    const unit = { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[rel[2]!.toLowerCase() as 's' | 'm' | 'h' | 'd'];
    return now - Number(rel[1]) * unit;
  }
  const t = Date.parse(v);
  return Number.isFinite(t) ? t : undefined;
}
