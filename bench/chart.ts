/**
 * A small grouped bar chart as hand-written SVG (no chart library): one group per
 * (packet size, queue count), one bar per series (DPDK, vhostfwd, vhostfwd + log).
 */

export interface ChartGroup {
  label: string;
  /** one value per series (null: no successful round) */
  values: Array<number | null>;
}

export interface ChartSpec {
  title: string;
  yLabel: string;
  series: Array<{ name: string; color: string }>;
  groups: ChartGroup[];
  note?: string;
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A "nice" axis maximum and tick step for values up to `max`. */
function axis(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  return { top: Math.ceil(max / step) * step, step };
}

export function barChart(c: ChartSpec): string {
  const barW = 22;
  const gap = 4;
  const groupGap = 26;
  const left = 60;
  const right = 20;
  const top = 48;
  const plotH = 260;
  const bottom = 64;
  const nS = c.series.length;
  const groupW = nS * barW + (nS - 1) * gap;
  const width = Math.max(420, left + right + c.groups.length * (groupW + groupGap) + groupGap);
  const height = top + plotH + bottom;
  const max = Math.max(0, ...c.groups.flatMap((g) => g.values.map((v) => v ?? 0)));
  const { top: yTop, step } = axis(max);
  const y = (v: number): number => top + plotH - (v / yTop) * plotH;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">${esc(c.title)}</text>`);
  if (c.note) out.push(`<text x="${width / 2}" y="34" text-anchor="middle" fill="#555">${esc(c.note)}</text>`);
  // grid and y axis
  for (let v = 0; v <= yTop + 1e-9; v += step) {
    const yy = y(v).toFixed(1);
    out.push(`<line x1="${left}" y1="${yy}" x2="${width - right}" y2="${yy}" stroke="#ddd"/>`);
    out.push(`<text x="${left - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle">${Number(v.toFixed(3))}</text>`);
  }
  out.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`<line x1="${left}" y1="${top + plotH}" x2="${width - right}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`<text transform="translate(16 ${top + plotH / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  // bars
  c.groups.forEach((g, gi) => {
    const gx = left + groupGap + gi * (groupW + groupGap);
    g.values.forEach((v, si) => {
      const x = gx + si * (barW + gap);
      if (v === null) {
        out.push(`<text x="${x + barW / 2}" y="${top + plotH - 4}" text-anchor="middle" fill="#c00">n/a</text>`);
        return;
      }
      const yy = y(v);
      out.push(`<rect x="${x}" y="${yy.toFixed(1)}" width="${barW}" height="${(top + plotH - yy).toFixed(1)}" fill="${c.series[si].color}"><title>${esc(`${c.series[si].name} ${g.label}: ${v.toFixed(3)}`)}</title></rect>`);
      out.push(`<text x="${x + barW / 2}" y="${(yy - 3).toFixed(1)}" text-anchor="middle" font-size="9">${v >= 10 ? v.toFixed(1) : v.toFixed(2)}</text>`);
    });
    out.push(`<text x="${gx + groupW / 2}" y="${top + plotH + 16}" text-anchor="middle">${esc(g.label)}</text>`);
  });
  // legend
  let lx = left;
  const ly = top + plotH + 38;
  for (const s of c.series) {
    out.push(`<rect x="${lx}" y="${ly - 9}" width="12" height="12" fill="${s.color}"/>`);
    out.push(`<text x="${lx + 16}" y="${ly + 1}">${esc(s.name)}</text>`);
    lx += 24 + s.name.length * 6.5;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
