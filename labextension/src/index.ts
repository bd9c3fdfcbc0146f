/*
 * gpuhub's JupyterLab extension: before the gpuhub service stops this server for being idle,
 * a notification says when and why, with a button that keeps it.
 *
 * It polls the server's own gpuhub extension (GET <base>/gpuhub/status: not counted as
 * activity), which relays the culler's warning; "Keep it" POSTs <base>/gpuhub/keep (counted as
 * activity, and recorded by the service, which starts the idle clocks again).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

const POLL_MS = 15_000;

interface CullWarning {
  message: string;
  cull_at: string;
  reason: string;
}

interface Status {
  enabled: boolean;
  warning?: CullWarning | null;
}

async function call(path: string, init: RequestInit = {}): Promise<Status> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpuhub', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    throw new Error(`gpuhub ${path}: ${response.status}`);
  }
  return (await response.json()) as Status;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@gpuhub/culling-warning:plugin',
  description: 'Warns before an idle server is stopped, with a Keep button.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    let shown: string | null = null; // the cull time of the warning on screen
    let notification: string | null = null;

    const keep = async (): Promise<void> => {
      try {
        await call('keep', { method: 'POST', body: '{}' });
        Notification.success('Kept: this server will not be stopped for now.', {
          autoClose: 5000
        });
      } catch (error) {
        Notification.error(`Could not keep the server: ${error}`, { autoClose: false });
      }
      shown = null;
      notification = null;
    };

    const poll = async (): Promise<void> => {
      let status: Status;
      try {
        status = await call('status');
      } catch {
        return; // the server is going away, or restarting: try again later
      }
      const warning = status.enabled ? status.warning : null;
      if (!warning) {
        if (notification !== null) {
          Notification.dismiss(notification);
        }
        shown = notification = null;
        return;
      }
      if (shown === warning.cull_at) {
        return;
      }
      if (notification !== null) {
        Notification.dismiss(notification);
      }
      shown = warning.cull_at;
      notification = Notification.warning(warning.message, {
        autoClose: false,
        actions: [
          {
            label: 'Keep it',
            caption: 'Keep this server running (counts as activity)',
            callback: () => void keep()
          }
        ]
      });
    };

    void app.restored.then(() => {
      void poll();
      window.setInterval(() => void poll(), POLL_MS);
    });
  }
};

export default plugin;
