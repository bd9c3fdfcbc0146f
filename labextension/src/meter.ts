/*
 * The GPU meter in JupyterLab's status bar: the server's GPUs by name (MIG slices as slices), their
 * utilisation and memory in use now, the session's cost so far and price per hour, and the team's
 * GPU-hours left this month. Clicking it opens a panel: the last hour per GPU as a chart (plain
 * SVG), the session's start, profile, team, and the deadlines that apply to this server.
 *
 * It draws what the server's gpuhub extension already serves: the status poll of index.ts (the
 * latest samples and the service's `session` answer) and, while the panel is open,
 * GET <base>/gpuhub/history (the extension's ring buffer of its own samples). It never asks for
 * anything else, so an open page costs the server one request per poll, and two with the panel open.
 * The panel also shows the session's right-sizing hint when the service's answer has one (a cheaper
 * profile that would have done for this server's GPU use so far).
 */
import { Widget } from '@lumino/widgets';

export interface GPU {
  uuid: string;
  name: string;
  is_mig: boolean;
  utilization: number | null;
  memory_used: number;
  memory_total: number;
  processes: number;
  error?: string | null;
}

export interface Deadline {
  reason: 'max-age' | 'budget' | 'reclaimed' | 'culled-gpu-idle' | 'culled-idle';
  at: string | null;
  after_seconds: number;
  keep: boolean;
}

export interface Session {
  started_at: string | null;
  profile: string;
  profile_name: string;
  gpu_type: string | null;
  gpu_type_name: string | null;
  gpu_count: number;
  team: string | null;
  team_name: string | null;
  price_per_hour: number;
  currency: string;
  cost: number;
  cost_at: string;
  /** It runs on other teams' idle quota, and may be reclaimed (absent from older services). */
  borrowed?: boolean;
  budget: {
    monthly_gpu_hours: number;
    gpu_hours_used: number;
    gpu_hours_left: number;
    percent_used: number;
    resets_at: string;
  } | null;
  deadlines: Deadline[];
  /** The service's right-sizing hint for this session; null: none (see docs/how-to/gpu-meter.md). */
  rightsizing?: Rightsizing | null;
}

export interface Rightsizing {
  suggested_profile: string;
  suggested_profile_name: string;
  suggested_price_per_hour: number;
  price_per_hour: number;
  currency: string;
  observed_hours: number;
  busy_percent: number | null;
  p95_percent: number | null;
  peak_memory_mib: number;
  memory_total_mib: number;
  /** 'used at most 6 GB of 80 GB and was busy 3 % of the time: `l4-single` would have cost ...' */
  hint: string;
}

export interface MeterStatus {
  enabled: boolean;
  gpus?: GPU[];
  session?: Session | null;
  nvml_error?: string | null;
  service_error?: string | null;
}

interface Series {
  uuid: string;
  name: string;
  is_mig: boolean;
  memory_total: number;
  /** [unix seconds, utilisation or null, memory used or null] */
  points: [number, number | null, number | null][];
}

interface History {
  enabled: boolean;
  span_seconds?: number;
  gpus?: Series[];
}

const GIB = 2 ** 30;

/** 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB MIG 1g.10gb (MIG slice)'. */
export function gpuName(gpu: { name: string; is_mig: boolean; uuid: string }): string {
  const name = gpu.name || gpu.uuid;
  return gpu.is_mig && !/slice/i.test(name) ? `${name} (MIG slice)` : name;
}

function gib(bytes: number): string {
  return (bytes / GIB).toFixed(bytes < 10 * GIB ? 1 : 0);
}

/** Memory in use of the total: '12.3 / 80 GiB'. */
function memory(used: number, total: number): string {
  return `${gib(used)} / ${gib(total)} GiB`;
}

function money(amount: number, currency: string): string {
  try {
    return new Intl.NumberFormat('en', {
      style: 'currency',
      currency,
      minimumFractionDigits: 2,
      maximumFractionDigits: amount !== 0 && Math.abs(amount) < 1 ? 3 : 2
    }).format(amount);
  } catch {
    return `${amount.toFixed(2)} ${currency}`;
  }
}

/** The cost now: the service's cost at `cost_at`, plus the price since (its billing rule). */
export function costNow(session: Session, now: number = Date.now()): number {
  const since = Math.max(now - Date.parse(session.cost_at), 0) / 3_600_000;
  return session.cost + session.price_per_hour * since;
}

function hours(value: number): string {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function utc(iso: string): string {
  const d = new Date(iso);
  const pad = (n: number): string => String(n).padStart(2, '0');
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`
  );
}

/** '45 s', '12 min', '1 h 55 min', '2 d 4 h'. */
function duration(seconds: number): string {
  seconds = Math.max(Math.round(seconds), 0);
  if (seconds < 60) {
    return `${seconds} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const h = Math.floor(minutes / 60);
  if (h < 48) {
    return minutes % 60 ? `${h} h ${minutes % 60} min` : `${h} h`;
  }
  return h % 24 ? `${Math.floor(h / 24)} d ${h % 24} h` : `${Math.floor(h / 24)} d`;
}

/** One line per rule: what stops the server, and when. */
export function deadlineText(d: Deadline, now: number = Date.now()): string {
  const after = duration(d.after_seconds);
  const what: Record<Deadline['reason'], string> = {
    'max-age': `Longest run allowed (${after})`,
    budget: `Team budget used up (stops ${after} after)`,
    reclaimed: 'Borrowed GPUs given back to their team',

    'culled-gpu-idle': `GPUs idle for ${after}`,
    'culled-idle': `No activity for ${after}`
  };
  let when: string;
  if (d.at) {
    when = `stops at ${utc(d.at)} (in ${duration((Date.parse(d.at) - now) / 1000)})`;
  } else if (d.reason === 'budget') {
    when = 'the budget is not used up';
  } else if (d.reason === 'culled-gpu-idle') {
    when = 'not counting: the GPUs are busy, or not idle yet';
  } else {
    when = 'the culler warns ahead of it; an open JupyterLab page counts as activity';
  }
  return `${what[d.reason]}: ${when}${d.keep ? '' : ' (Keep cannot delay it)'}`;
}

/** The status bar's text: GPUs now, cost and price, budget left. */
export function meterText(status: MeterStatus, now: number = Date.now()): string {
  const parts: string[] = [];
  for (const gpu of status.gpus ?? []) {
    if (gpu.error) {
      parts.push(`${gpuName(gpu)}: cannot be read`);
    } else if (gpu.is_mig || gpu.utilization === null) {
      parts.push(`${gpuName(gpu)} ${memory(gpu.memory_used, gpu.memory_total)}`);
    } else {
      parts.push(
        `${gpuName(gpu)} ${gpu.utilization}% ${memory(gpu.memory_used, gpu.memory_total)}`
      );
    }
  }
  const session = status.session;
  if (session) {
    parts.push(
      `${money(costNow(session, now), session.currency)} ` +
        `(${money(session.price_per_hour, session.currency)}/h)`
    );
    if (session.budget) {
      parts.push(`${hours(session.budget.gpu_hours_left)} GPU-h left`);
    }
    if (session.borrowed) {
      parts.push('borrowed');
    }
  } else if (!(status.gpus ?? []).length) {
    parts.push('cost not known yet');
  }
  return parts.join(' · ');
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 420;
const HEIGHT = 90;

/** The last hour of one GPU: utilisation (solid) and memory in use (dashed), 0-100 %. */
function chart(series: Series, spanSeconds: number, nowSeconds: number): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute('width', String(WIDTH));
  svg.setAttribute('height', String(HEIGHT));
  svg.setAttribute('class', 'gpuhub-meter-chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute(
    'aria-label',
    `${gpuName(series)}: ${series.is_mig ? 'memory' : 'utilisation and memory'}, last hour`
  );
  const x = (t: number): number => WIDTH - ((nowSeconds - t) / spanSeconds) * WIDTH;
  const y = (percent: number): number => HEIGHT - 2 - (percent / 100) * (HEIGHT - 4);
  for (const level of [0, 50, 100]) {
    const grid = document.createElementNS(SVG, 'line');
    grid.setAttribute('x1', '0');
    grid.setAttribute('x2', String(WIDTH));
    grid.setAttribute('y1', String(y(level)));
    grid.setAttribute('y2', String(y(level)));
    grid.setAttribute('stroke', 'var(--jp-border-color2, #ddd)');
    grid.setAttribute('stroke-width', '1');
    svg.appendChild(grid);
  }
  const line = (values: (number | null)[], className: string, colour: string, dash: string) => {
    // a gap where a value is missing (a failed read; no utilisation for a MIG slice)
    let d = '';
    let pen = false;
    series.points.forEach((p, i) => {
      const v = values[i];
      if (v === null) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (!d) {
      return;
    }
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', d);
    path.setAttribute('class', className);
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke', colour);
    path.setAttribute('stroke-width', '1.5');
    if (dash) {
      path.setAttribute('stroke-dasharray', dash);
    }
    svg.appendChild(path);
  };
  if (!series.is_mig) {
    line(
      series.points.map(p => p[1]),
      'gpuhub-meter-utilization',
      'var(--jp-brand-color1, #1976d2)',
      ''
    );
  }
  const total = series.memory_total || 1;
  line(
    series.points.map(p => (p[2] === null ? null : (p[2] * 100) / total)),
    'gpuhub-meter-memory',
    'var(--jp-warn-color1, #f57c00)',
    series.is_mig ? '' : '4 2'
  );
  return svg;
}

/** The hint as the panel shows it: 'This server used at most ...', profile slugs in <code>. */
export function hintNode(r: Rightsizing): HTMLElement {
  const node = el('dd', 'gpuhub-meter-value gpuhub-meter-rightsizing');
  node.style.margin = '0';
  `This server ${r.hint}.`.split('`').forEach((part, i) => {
    const code = el('code', '', part);
    code.style.whiteSpace = 'nowrap';
    node.append(i % 2 ? code : document.createTextNode(part));
  });
  return node;
}

/** The panel the status bar item opens. */
export class MeterPanel extends Widget {
  constructor() {
    super();
    this.id = 'gpuhub-meter-panel';
    this.addClass('gpuhub-meter-panel');
    this.node.style.width = `${WIDTH + 24}px`;
    this.node.style.padding = '8px 12px';
    this.node.style.background = 'var(--jp-layout-color1)';
    this.node.style.color = 'var(--jp-ui-font-color1)';
    this.node.style.fontSize = 'var(--jp-ui-font-size1)';
    this.node.style.overflowY = 'auto';
    this._charts = el('div', 'gpuhub-meter-charts');
    this._facts = el('dl', 'gpuhub-meter-facts');
    this._facts.style.display = 'grid';
    this._facts.style.gridTemplateColumns = 'max-content 1fr';
    this._facts.style.columnGap = '12px';
    this._facts.style.rowGap = '2px';
    this._facts.style.margin = '8px 0 0';
    this.node.append(el('h3', 'gpuhub-meter-title', 'GPU meter: this server'), this._charts);
    this.node.append(this._facts);
    (this.node.firstChild as HTMLElement).style.margin = '0 0 6px';
  }

  showStatus(status: MeterStatus): void {
    this._status = status;
    this._render();
  }

  showHistory(history: History): void {
    this._history = history;
    this._render();
  }

  private _render(): void {
    const now = Date.now();
    const status = this._status;
    const gpus = status?.gpus ?? [];
    // the last hour; a server younger than that fills the width with what it has (1 min at least)
    const first = Math.min(
      ...(this._history?.gpus ?? []).map(g => (g.points.length ? g.points[0][0] : Infinity))
    );
    const hour = this._history?.span_seconds ?? 3600;
    const span = Math.min(hour, Math.max(now / 1000 - first, 60));
    const shown = span >= hour ? 'last hour' : `last ${duration(span)}`;
    const byUuid = new Map((this._history?.gpus ?? []).map(s => [s.uuid, s]));
    this._charts.replaceChildren(
      ...gpus.map(gpu => {
        const box = el('div', 'gpuhub-meter-gpu');
        box.dataset.uuid = gpu.uuid;
        box.dataset.mig = String(gpu.is_mig);
        const title = el('div', 'gpuhub-meter-gpu-name', gpuName(gpu));
        title.style.fontWeight = '600';
        const now_ = gpu.error
          ? `cannot be read: ${gpu.error}`
          : gpu.is_mig || gpu.utilization === null
            ? `memory ${memory(gpu.memory_used, gpu.memory_total)}; utilisation not available` +
              (gpu.is_mig ? ' (NVML reports none for a MIG slice)' : '')
            : `utilisation ${gpu.utilization}% · memory ${memory(gpu.memory_used, gpu.memory_total)}`;
        box.append(title, el('div', 'gpuhub-meter-gpu-now', now_));
        const series = byUuid.get(gpu.uuid);
        if (series && series.points.length) {
          box.append(chart(series, span, now / 1000));
          const legend = gpu.is_mig
            ? `${shown}: memory in use (% of the slice)`
            : `${shown}: utilisation (solid), memory in use (dashed), 0-100 %`;
          box.append(el('div', 'gpuhub-meter-legend', legend));
        } else {
          box.append(el('div', 'gpuhub-meter-legend', 'last hour: loading…'));
        }
        box.style.marginBottom = '6px';
        return box;
      })
    );
    const facts: [string, string | Rightsizing][] = [];
    const session = status?.session;
    if (session) {
      facts.push(['Started', session.started_at ? utc(session.started_at) : 'not yet']);
      facts.push(['Profile', `${session.profile_name} (${session.profile})`]);
      facts.push(['Team charged', session.team_name ?? 'none']);
      if (session.borrowed) {
        facts.push([
          'Quota',
          "borrowed from other teams' idle quota: it may be stopped, with notice, to give its " +
            'GPUs back (see the deadlines below)'
        ]);
      }
      facts.push(['Price', `${money(session.price_per_hour, session.currency)} per hour`]);
      facts.push(['Cost so far', money(costNow(session, now), session.currency)]);
      if (session.budget) {
        const b = session.budget;
        facts.push([
          'Team budget left',
          `${hours(b.gpu_hours_left)} of ${hours(b.monthly_gpu_hours)} GPU-hours this month ` +
            `(${b.percent_used}% used; resets ${utc(b.resets_at).slice(0, 10)})`
        ]);
      }
      session.deadlines.forEach((d, i) => {
        facts.push([i === 0 ? 'Stopped for' : '', deadlineText(d, now)]);
      });
      if (session.rightsizing) {
        facts.push(['Right-sizing', session.rightsizing]);
      }
    } else {
      facts.push(['Cost', status?.service_error ? 'the gpuhub service does not answer' : 'not known yet']);
    }
    this._facts.replaceChildren(
      ...facts.flatMap(([term, text]) => {
        const dt = el('dt', 'gpuhub-meter-term', term);
        dt.style.fontWeight = '600';
        if (typeof text !== 'string') {
          return [dt, hintNode(text)];
        }
        const dd = el('dd', 'gpuhub-meter-value', text);
        dd.style.margin = '0';
        return [dt, dd];
      })
    );
  }

  private _charts: HTMLDivElement;
  private _facts: HTMLDListElement;
  private _status: MeterStatus | null = null;
  private _history: History | null = null;
}

/** The status bar item; `history` fetches the ring buffer while the panel is open. */
export class MeterItem extends Widget {
  constructor(history: () => Promise<History>, pollMs: number) {
    super();
    this.id = 'gpuhub-meter';
    this.addClass('gpuhub-meter');
    this.addClass('jp-StatusBar-GroupItem');
    this.node.title = 'GPU meter: click for the last hour, the deadlines and the budget';
    this.node.style.cursor = 'pointer';
    this.node.style.padding = '0 6px';
    this.node.setAttribute('role', 'button');
    this._history = history;
    this._pollMs = pollMs;
    this.node.addEventListener('click', () => this.toggle());
  }

  setStatus(status: MeterStatus): void {
    this._status = status;
    this.node.textContent = meterText(status);
    this._panel?.showStatus(status);
  }

  /** Open the panel above the item, or close it. */
  toggle(): void {
    if (this._panel && !this._panel.isDisposed) {
      this._close();
      return;
    }
    const panel = (this._panel = new MeterPanel());
    if (this._status) {
      panel.showStatus(this._status);
    }
    const anchor = this.node.getBoundingClientRect();
    const style = panel.node.style;
    style.position = 'fixed';
    style.zIndex = '10000';
    style.left = `${Math.max(4, Math.min(anchor.left, window.innerWidth - WIDTH - 40))}px`;
    style.bottom = `${Math.max(window.innerHeight - anchor.top + 2, 0)}px`;
    style.maxHeight = `${Math.max(anchor.top - 8, 120)}px`;
    style.border = '1px solid var(--jp-border-color1)';
    style.boxShadow = 'var(--jp-elevation-z6)';
    Widget.attach(panel, document.body);
    document.addEventListener('mousedown', this._outside, true);
    document.addEventListener('keydown', this._escape, true);
    const load = async (): Promise<void> => {
      try {
        panel.showHistory(await this._history());
      } catch {
        // the server is going away: the next load tries again
      }
    };
    void load();
    this._timer = window.setInterval(() => void load(), this._pollMs);
  }

  private _close(): void {
    window.clearInterval(this._timer);
    document.removeEventListener('mousedown', this._outside, true);
    document.removeEventListener('keydown', this._escape, true);
    this._panel?.dispose();
    this._panel = null;
  }

  private _outside = (event: MouseEvent): void => {
    const target = event.target as Node | null;
    if (target && !this._panel?.node.contains(target) && !this.node.contains(target)) {
      this._close();
    }
  };

  private _escape = (event: KeyboardEvent): void => {
    if (event.key === 'Escape') {
      this._close();
    }
  };

  private _timer = 0;
  private _history: () => Promise<History>;
  private _pollMs: number;
  private _status: MeterStatus | null = null;
  private _panel: MeterPanel | null = null;
}
