// Copies Chart.js (pinned in package.json) and its license into the gpuhub package's static
// files, for the usage page. Run by `npm run build`; the copies are not committed.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const chartjs = join(here, "node_modules", "chart.js");
const vendor = join(here, "..", "spawner_ext", "service", "static", "vendor");
mkdirSync(vendor, { recursive: true });
copyFileSync(join(chartjs, "dist", "chart.umd.min.js"), join(vendor, "chart.umd.min.js"));
copyFileSync(join(chartjs, "LICENSE.md"), join(vendor, "chart.js-LICENSE.md"));
