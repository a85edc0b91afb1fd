/**
 * The report as ONE self-contained HTML file: inline CSS, hand-written SVG charts, thumbnails as data: URIs, no
 * script and a Content-Security-Policy that forbids every network fetch. Captions, URLs and reason messages are
 * crawled or derived from crawled text: everything interpolated goes through {@link escapeHtml}.
 */
import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';
import { BINS, type ReportData, type ReportSample } from './collect.ts';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => ESCAPES[c]!);

/** JSON safe inside a <script type="application/json"> element (no `</script>`, no HTML-significant characters). */
export function jsonForScript(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

const COLORS = { accepted: '#2f8f5b', rejected: '#cf4b3f', rate: '#2563eb', volume: '#dbe3ee', axis: '#64748b' };
const pct = (x: number | null) => (x === null ? 'n/a' : `${(x * 100).toFixed(1)}%`);
const fmt = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1));
const metricName = (m: MetricShort) => METRICS.find((x) => x.short === m)!.key.replace(/_/g, ' ');

function niceMax(n: number): number {
  if (n <= 5) return Math.max(1, n);
  const p = 10 ** Math.floor(Math.log10(n));
  return [1, 2, 2.5, 5, 10].map((k) => k * p).find((v) => v >= n)!;
}

/** Grouped bar chart: per score bin, accepted and rejected counts. */
export function histogramSvg(metric: MetricShort, h: ReportData['histograms'][MetricShort]): string {
  const W = 380;
  const H = 210;
  const x0 = 44;
  const x1 = W - 10;
  const y0 = H - 34;
  const y1 = 26;
  const max = niceMax(Math.max(...h.accepted, ...h.rejected));
  const bw = (x1 - x0) / BINS;
  const y = (v: number) => y0 - ((y0 - y1) * v) / max;
  const parts: string[] = [];
  for (const t of [0, max / 2, max]) {
    parts.push(
      `<line x1="${x0}" x2="${x1}" y1="${y(t)}" y2="${y(t)}" stroke="#e2e8f0"/>`,
      `<text x="${x0 - 6}" y="${y(t) + 4}" text-anchor="end" class="tick">${fmt(t)}</text>`,
    );
  }
  for (let i = 0; i < BINS; i++) {
    const label = i === BINS - 1 ? '90-100' : `${i * 10}-${i * 10 + 9}`;
    (['accepted', 'rejected'] as const).forEach((decision, k) => {
      const v = h[decision][i]!;
      const x = x0 + i * bw + 2 + k * ((bw - 4) / 2);
      parts.push(
        `<rect class="bar ${decision}" data-metric="${metric}" data-decision="${decision}" data-bin="${i}" data-count="${v}" ` +
          `x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${((bw - 4) / 2).toFixed(1)}" height="${(y0 - y(v)).toFixed(1)}" fill="${COLORS[decision]}">` +
          `<title>${metric} ${label}: ${v} ${decision}</title></rect>`,
      );
    });
  }
  for (let i = 0; i <= BINS; i += 2) {
    parts.push(`<text x="${x0 + i * bw}" y="${y0 + 14}" text-anchor="middle" class="tick">${i * 10}</text>`);
  }
  parts.push(`<line x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}" stroke="${COLORS.axis}"/>`);
  const mean = (v: number | null) => (v === null ? '-' : v.toFixed(1));
  return (
    `<svg class="chart histogram" data-metric="${metric}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${metric} score histogram">` +
    `<text x="${x0}" y="15" class="title">${metric.toUpperCase()} <tspan class="sub">${escapeHtml(metricName(metric))}</tspan></text>` +
    `<text x="${x1}" y="15" text-anchor="end" class="sub">mean acc ${mean(h.mean.accepted)} · rej ${mean(h.mean.rejected)}</text>` +
    parts.join('') +
    `<text x="${(x0 + x1) / 2}" y="${H - 4}" text-anchor="middle" class="tick">score</text>` +
    `</svg>`
  );
}

function axisLabel(axis: 'time' | 'position', x: number, span: number): string {
  if (axis === 'position') return `#${Math.round(x)}`;
  const iso = new Date(x).toISOString();
  return span > 2 * 86_400_000
    ? iso.slice(0, 10)
    : span > 3_600_000
      ? iso.slice(5, 16).replace('T', ' ')
      : iso.slice(11, 19);
}

/** Accept rate per bucket (line, left axis) over event volume (bars, right axis). */
export function timelineSvg(t: ReportData['timeline']): string {
  if (!t.axis || t.buckets.length === 0) return '';
  const W = 780;
  const H = 240;
  const x0 = 48;
  const x1 = W - 52;
  const y0 = H - 36;
  const y1 = 20;
  const n = t.buckets.length;
  const bw = (x1 - x0) / n;
  // Volume stays in the lower part of the plot so the rate line reads on top of it.
  const vmax = niceMax(2.5 * Math.max(...t.buckets.map((b) => b.accepted + b.rejected)));
  const yr = (r: number) => y0 - (y0 - y1) * r;
  const yv = (v: number) => y0 - ((y0 - y1) * v) / vmax;
  const parts: string[] = [];
  for (const r of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(
      `<line x1="${x0}" x2="${x1}" y1="${yr(r)}" y2="${yr(r)}" stroke="#e2e8f0"/>`,
      `<text x="${x0 - 6}" y="${yr(r) + 4}" text-anchor="end" class="tick">${r * 100}%</text>`,
    );
  }
  for (const v of [0, vmax / 2, vmax]) {
    parts.push(`<text x="${x1 + 6}" y="${yv(v) + 4}" class="tick">${fmt(v)}</text>`);
  }
  const points: string[] = [];
  t.buckets.forEach((b, i) => {
    const total = b.accepted + b.rejected;
    parts.push(
      `<rect class="volume" data-bucket="${i}" data-total="${total}" x="${(x0 + i * bw + 1).toFixed(1)}" y="${yv(total).toFixed(1)}" ` +
        `width="${Math.max(1, bw - 2).toFixed(1)}" height="${(y0 - yv(total)).toFixed(1)}" fill="${COLORS.volume}"><title>${total} events</title></rect>`,
    );
    if (total > 0) points.push(`${(x0 + (i + 0.5) * bw).toFixed(1)},${yr(b.accepted / total).toFixed(1)}`);
  });
  parts.push(
    `<polyline class="rate-line" points="${points.join(' ')}" fill="none" stroke="${COLORS.rate}" stroke-width="2"/>`,
  );
  t.buckets.forEach((b, i) => {
    const total = b.accepted + b.rejected;
    if (total === 0) return;
    const rate = b.accepted / total;
    parts.push(
      `<circle class="rate" data-bucket="${i}" data-rate="${rate.toFixed(4)}" data-accepted="${b.accepted}" data-rejected="${b.rejected}" ` +
        `cx="${(x0 + (i + 0.5) * bw).toFixed(1)}" cy="${yr(rate).toFixed(1)}" r="3" fill="${COLORS.rate}">` +
        `<title>${(rate * 100).toFixed(1)}% accepted (${b.accepted}/${total})</title></circle>`,
    );
  });
  const span = t.buckets[n - 1]!.end - t.buckets[0]!.start;
  const ticks = Math.min(6, n);
  for (let k = 0; k <= ticks; k++) {
    const x = x0 + ((x1 - x0) * k) / ticks;
    const v = t.buckets[0]!.start + (span * k) / ticks;
    parts.push(
      `<text x="${x}" y="${y0 + 14}" text-anchor="middle" class="tick">${escapeHtml(axisLabel(t.axis, v, span))}</text>`,
    );
  }
  parts.push(`<line x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}" stroke="${COLORS.axis}"/>`);
  const xTitle = t.axis === 'time' ? 'event time (UTC)' : 'input position (line / offset)';
  return (
    `<svg class="chart timeline" viewBox="0 0 ${W} ${H}" role="img" aria-label="accept rate over ${t.axis}">` +
    parts.join('') +
    `<text x="${(x0 + x1) / 2}" y="${H - 4}" text-anchor="middle" class="tick">${xTitle}</text></svg>`
  );
}

function reasonsTable(d: ReportData): string {
  if (d.reasons.length === 0) return '<p class="muted">No rejects.</p>';
  const rows = d.reasons
    .map((r) => {
      const extra =
        r.code === 'below_threshold' && Object.keys(d.belowThresholdByMetric).length
          ? `<div class="muted small">${Object.entries(d.belowThresholdByMetric)
              .map(([m, n]) => `${escapeHtml(m)}: ${n}`)
              .join(' · ')}</div>`
          : '';
      return (
        `<tr data-code="${escapeHtml(r.code)}" data-count="${r.count}"><td><code>${escapeHtml(r.code)}</code>${extra}</td>` +
        `<td class="num">${r.count}</td><td class="num">${pct(r.share)}</td>` +
        `<td class="barcell"><div class="hbar" style="width:${(r.share * 100).toFixed(1)}%"></div></td></tr>`
      );
    })
    .join('');
  return `<table class="reasons"><thead><tr><th>reason</th><th>rejects</th><th>share</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
}

function sampleCard(s: ReportSample): string {
  const scores = METRICS.map(
    ({ short }) => `<span class="score" data-metric="${short}">${short} <b>${s.scores[short] ?? '–'}</b></span>`,
  ).join('');
  const img = s.thumbnail
    ? `<img src="${escapeHtml(s.thumbnail)}" alt="thumbnail of ${escapeHtml(s.id)}">`
    : `<div class="noimg">${s.decision === 'reject' ? 'rejected: image not kept' : 'no thumbnail'}</div>`;
  const reasons = s.reasons.length
    ? `<div class="why">${s.reasons.map((r) => `<code>${escapeHtml(r.code)}</code> ${escapeHtml(r.message)}`).join('<br>')}</div>`
    : '';
  const url = s.url ? `<div class="url" title="${escapeHtml(s.url)}">${escapeHtml(s.url)}</div>` : '';
  return (
    `<figure class="card ${s.decision}" data-id="${escapeHtml(s.id)}">${img}<figcaption>` +
    `<div class="caption">${s.caption === null ? '<i class="muted">no caption</i>' : escapeHtml(s.caption)}</div>` +
    `<div class="scores">${scores}</div>${reasons}${url}</figcaption></figure>`
  );
}

const CSS = `
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#0f172a;background:#f8fafc}
header{background:#0f172a;color:#f8fafc;padding:18px 28px}header h1{margin:0 0 4px;font-size:20px}header .meta{color:#94a3b8;font-size:12px}
main{padding:20px 28px;max-width:1640px}section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:16px 18px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 12px}.kpis{display:flex;gap:14px;flex-wrap:wrap}.kpi{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 18px;min-width:150px}
.kpi .v{font-size:26px;font-weight:650}.kpi .l{color:#64748b;font-size:12px;text-transform:uppercase;letter-spacing:.04em}.kpi.acc .v{color:${COLORS.accepted}}.kpi.rej .v{color:${COLORS.rejected}}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}svg.chart{width:100%;height:auto;background:#fff}svg.timeline{max-width:1100px;display:block}
svg .tick{font-size:10px;fill:${COLORS.axis}}svg .title{font-size:13px;font-weight:650;fill:#0f172a}svg .sub{font-size:10px;fill:${COLORS.axis};font-weight:400}
.legend span{display:inline-block;margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table.reasons{border-collapse:collapse;width:100%;max-width:820px}table.reasons td,table.reasons th{padding:6px 10px;border-bottom:1px solid #e2e8f0;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.barcell{width:40%}.hbar{height:10px;background:${COLORS.rejected};border-radius:2px;min-width:2px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}.card{margin:0;border:1px solid #e2e8f0;border-radius:8px;overflow:hidden;background:#fff}
.card.accepted{border-top:3px solid ${COLORS.accepted}}.card.reject{border-top:3px solid ${COLORS.rejected}}.card.accept{border-top:3px solid ${COLORS.accepted}}
.card img{display:block;width:100%;height:150px;object-fit:cover;background:#e2e8f0}.noimg{height:64px;display:flex;align-items:center;justify-content:center;color:#94a3b8;background:#f1f5f9;font-size:12px}
figcaption{padding:8px 10px}.caption{display:-webkit-box;-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden;overflow-wrap:anywhere;margin-bottom:6px}
.scores{display:flex;gap:6px;flex-wrap:wrap}.score{font-size:11px;background:#f1f5f9;border-radius:4px;padding:1px 5px;color:#334155}
.why{margin-top:6px;font-size:12px;color:#7f1d1d;overflow-wrap:anywhere}.url{margin-top:6px;font-size:11px;color:#64748b;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.muted{color:#64748b}.small{font-size:12px}.notes li{color:#92400e}code{font-size:12px}
`;

/** The whole report page. */
export function renderReportHtml(d: ReportData): string {
  const legend = `<div class="legend"><span><i style="background:${COLORS.accepted}"></i>accepted</span><span><i style="background:${COLORS.rejected}"></i>rejected</span></div>`;
  const timeline = timelineSvg(d.timeline);
  const embedded = {
    ...d,
    samples: {
      accepted: d.samples.accepted.map(({ thumbnail, image: _image, ...s }) => ({ ...s, hasThumbnail: !!thumbnail })),
      rejected: d.samples.rejected.map(({ thumbnail, image: _image, ...s }) => ({ ...s, hasThumbnail: !!thumbnail })),
    },
  };
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>${escapeHtml(d.title)}</title><style>${CSS}</style></head>
<body><header><h1>${escapeHtml(d.title)}</h1><div class="meta">input ${escapeHtml(d.input)} · generated ${escapeHtml(d.generatedAt)}</div></header>
<main>
<div class="kpis" id="kpis">
<div class="kpi"><div class="v" data-kpi="events">${d.totals.events}</div><div class="l">pairs</div></div>
<div class="kpi acc"><div class="v" data-kpi="accepted">${d.totals.accepted}</div><div class="l">accepted</div></div>
<div class="kpi rej"><div class="v" data-kpi="rejected">${d.totals.rejected}</div><div class="l">rejected</div></div>
<div class="kpi"><div class="v" data-kpi="accept-rate">${pct(d.acceptRate)}</div><div class="l">accept rate</div></div>
${d.totals.duplicates ? `<div class="kpi"><div class="v" data-kpi="duplicates">${d.totals.duplicates}</div><div class="l">duplicate events</div></div>` : ''}
${d.totals.malformed ? `<div class="kpi"><div class="v" data-kpi="malformed">${d.totals.malformed}</div><div class="l">unreadable events</div></div>` : ''}
</div>
${d.notes.length ? `<section><ul class="notes">${d.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul></section>` : ''}
<section id="histograms"><h2>Score histograms</h2>${legend}<div class="charts">${METRICS.map((m) => histogramSvg(m.short, d.histograms[m.short])).join('')}</div></section>
${timeline ? `<section id="timeline"><h2>Accept rate over ${d.timeline.axis === 'time' ? 'time' : 'input position'}</h2><div class="legend"><span><i style="background:${COLORS.rate}"></i>accept rate (left)</span><span><i style="background:${COLORS.volume}"></i>pairs per bucket (right)</span></div>${timeline}</section>` : ''}
<section id="reasons"><h2>Reject reasons</h2>${reasonsTable(d)}</section>
<section id="accepted-samples"><h2>Accepted samples (${d.samples.accepted.length} of ${d.totals.accepted})</h2><div class="gallery">${d.samples.accepted.map(sampleCard).join('')}</div></section>
<section id="rejected-samples"><h2>Rejected samples (${d.samples.rejected.length} of ${d.totals.rejected})</h2><div class="gallery">${d.samples.rejected.map(sampleCard).join('')}</div></section>
</main>
<script type="application/json" id="report-data">${jsonForScript(embedded)}</script>
</body></html>
`;
}
