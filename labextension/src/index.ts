/*
 * gpuhub's JupyterLab extension: before the gpuhub service stops this server, a notification says
 * when and why, with a button that keeps it where Keep can delay the stop (idleness); and a
 * banner at the top says what Keep cannot change: a stop for the longest run allowed (max_age)
 * or the team's spent budget, or a borrowed server's reclaim, with whom to ask, and the team's
 * budget from its warning threshold on (the share used; at 100 %, when its GPU servers are
 * stopped). Before a stop Keep cannot delay, open documents are saved (Save All), a minute
 * ahead, and for a reclaim also when it is announced.
 *
 * It polls the server's own gpuhub extension (GET <base>/gpuhub/status: not counted as
 * activity), which relays the service's answer to its reports; "Keep it" POSTs
 * <base>/gpuhub/keep (counted as activity, and recorded by the service, which starts the idle
 * clocks again).
 *
 * The same poll feeds the GPU meter in the status bar (meter.ts).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { MeterItem, MeterStatus } from './meter';

const POLL_MS = 15_000;
/** Open documents are saved this long before a stop Keep cannot delay (and when a borrowed
 * server's reclaim is first announced). */
const SAVE_BEFORE_MS = 60_000;

interface CullWarning {
  message: string;
  cull_at: string;
  reason: string;
  /** Whether Keep can delay this stop (idleness); absent from older services: true. */
  keep?: boolean;
  /** What to do when Keep cannot delay it, and whom to ask. */
  advice?: string;
}

interface BudgetNotice {
  team: string;
  team_name: string;
  level: 'warning' | 'used-up';
  percent_used: number;
  stop_at: string | null;
  leads: string;
  message: string;
}

interface Status extends MeterStatus {
  enabled: boolean;
  warning?: CullWarning | null;
  budget?: BudgetNotice | null;
}

async function call<T = Status>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpuhub', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    throw new Error(`gpuhub ${path}: ${response.status}`);
  }
  return (await response.json()) as T;
}

/** One sentence of the banner: a stop Keep cannot delay, or the team's budget. */
interface Line {
  kind: string;
  urgent: boolean;
  text: string;
  data: Record<string, string>;
}

/**
 * The banner above JupyterLab's menu (the shell's header area): full sentences, which
 * notifications would cut at 140 characters. Hidden while there is nothing to say.
 */
class NoticeBanner extends Widget {
  constructor() {
    super();
    this.id = 'gpuhub-notices';
    this.addClass('gpuhub-notices');
    this.node.setAttribute('role', 'status');
    this.node.setAttribute('aria-live', 'polite');
    this._content = document.createElement('div');
    this.node.appendChild(this._content);
    this.hide();
  }

  setLines(lines: Line[]): void {
    const key = JSON.stringify(lines);
    if (key === this._shown) {
      return;
    }
    this._shown = key;
    this._content.replaceChildren(
      ...lines.map(line => {
        const p = document.createElement('p');
        p.className = `gpuhub-notice ${line.kind}`;
        for (const [name, value] of Object.entries(line.data)) {
          p.dataset[name] = value;
        }
        p.textContent = line.text;
        p.style.margin = '0';
        p.style.padding = '4px 12px';
        p.style.color = 'var(--jp-ui-font-color0)';
        p.style.background = line.urgent
          ? 'var(--jp-error-color3, #ffcdd2)'
          : 'var(--jp-warn-color3, #ffe0b2)';
        p.style.borderBottom = '1px solid var(--jp-border-color1)';
        p.style.fontSize = 'var(--jp-ui-font-size1)';
        return p;
      })
    );
    this.setHidden(lines.length === 0);
    this._fit();
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this._fit();
  }

  /** The header area sizes its children by their minimum height: the text's, wrapped. */
  private _fit(): void {
    if (this.isHidden) {
      return;
    }
    const height = Math.ceil(this._content.getBoundingClientRect().height);
    if (`${height}px` !== this.node.style.minHeight) {
      this.node.style.minHeight = `${height}px`;
      this.parent?.fit();
    }
  }

  private _content: HTMLDivElement;
  private _shown = '';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpuhub/culling-warning:plugin',
  description:
    'Warns before gpuhub stops this server (with a Keep button where Keep helps), and ' +
    "shows the team's GPU budget from its warning threshold on; a GPU meter in the status bar.",
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    let shown: string | null = null; // the cull time and reason of the warning on screen
    let notification: string | null = null;
    const banner = new NoticeBanner();
    app.shell.add(banner, 'header');
    let meter: MeterItem | null = null;
    const showMeter = (status: Status): void => {
      if (!status.enabled || statusBar === null) {
        return; // not a gpuhub server, or a JupyterLab without a status bar
      }
      if (meter === null) {
        meter = new MeterItem(() => call('history'), POLL_MS);
        statusBar.registerStatusItem(meter.id, { item: meter, align: 'left', rank: 1000 });
      }
      meter.setStatus(status);
    };

    const keep = async (): Promise<void> => {
      try {
        const status = await call('keep', { method: 'POST', body: '{}' });
        Notification.success(
          'Kept: its idle time starts again from now.' +
            (status.warning ? ' Another stop is still ahead.' : ''),
          { autoClose: 5000 }
        );
      } catch (error) {
        Notification.error(`Could not keep the server: ${error}`, { autoClose: false });
      }
      shown = null;
      notification = null;
    };

    let saveTimer: number | null = null;
    const saveAll = (): void => {
      // every open document with unsaved changes, as File > Save All does
      void app.commands.execute('docmanager:save-all').catch(() => undefined);
    };
    const saveBefore = (warning: CullWarning | null): void => {
      if (saveTimer !== null) {
        window.clearTimeout(saveTimer);
        saveTimer = null;
      }
      if (!warning || warning.keep !== false) {
        return; // no stop, or one Keep can delay: the person decides
      }
      const wait = Date.parse(warning.cull_at) - Date.now() - SAVE_BEFORE_MS;
      if (warning.reason === 'reclaimed' || wait <= 0) {
        saveAll(); // announced with its notice (a reclaim), or seen in the last minute: now
      }
      if (wait > 0) {
        // and again a minute before; never twice at once, which JupyterLab would take for
        // the file changed on disk and ask the person whether to overwrite it
        saveTimer = window.setTimeout(saveAll, wait);
      }
    };

    const showWarning = (warning: CullWarning | null): void => {
      if (!warning) {
        if (notification !== null) {
          Notification.dismiss(notification);
        }
        shown = notification = null;
        saveBefore(null);
        return;
      }
      const keepable = warning.keep !== false;
      const key = `${warning.cull_at} ${warning.reason} ${keepable}`;
      if (shown === key) {
        return;
      }
      saveBefore(warning);
      if (notification !== null) {
        Notification.dismiss(notification);
      }
      shown = key;
      const actions = keepable
        ? [
            {
              label: 'Keep it',
              caption: 'Keep this server running (counts as activity)',
              callback: () => void keep()
            }
          ]
        : [];
      notification = Notification.warning(warning.message, { autoClose: false, actions });
    };

    const showBanner = (warning: CullWarning | null, budget: BudgetNotice | null): void => {
      const lines: Line[] = [];
      if (warning && warning.keep === false) {
        lines.push({
          kind: 'gpuhub-stop-notice',
          urgent: true,
          text: `${warning.message} ${warning.advice ?? ''}`.trim(),
          data: { reason: warning.reason }
        });
      }
      if (budget) {
        lines.push({
          kind: 'gpuhub-budget-notice',
          urgent: budget.level === 'used-up',
          text: budget.message,
          data: { level: budget.level, team: budget.team }
        });
      }
      banner.setLines(lines);
    };

    const poll = async (): Promise<void> => {
      let status: Status;
      try {
        status = await call('status');
      } catch {
        return; // the server is going away, or restarting: try again later
      }
      const warning = status.enabled ? (status.warning ?? null) : null;
      const budget = status.enabled ? (status.budget ?? null) : null;
      showWarning(warning);
      showBanner(warning, budget);
      showMeter(status);
    };

    void app.restored.then(() => {
      void poll();
      window.setInterval(() => void poll(), POLL_MS);
    });
  }
};

export default plugin;
