// Build every JavaScript plugin here into a WebAssembly component:
//   node build.mjs [out-dir]   (default: ../../target/languages)
// Each plugin is a directory holding <name>.js; the world comes from its
// wsgate-plugin.toml (`role`), the WIT from the repository's wit/ folder.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wit = resolve(here, '../../../wit');
const out = resolve(process.argv[2] ?? join(here, '../../target/languages'));
const worlds = { upgrade: 'upgrade-filter', message: 'message-filter', filter: 'filter' };
mkdirSync(out, { recursive: true });

for (const name of readdirSync(here)) {
  const source = join(here, name, `${name}.js`);
  if (!existsSync(source)) continue;
  const manifest = readFileSync(join(here, name, 'wsgate-plugin.toml'), 'utf8');
  const role = /^role\s*=\s*"([a-z]+)"/m.exec(manifest)?.[1];
  const world = worlds[role];
  if (!world) throw new Error(`${name}/wsgate-plugin.toml: role must be upgrade, message or filter`);
  const target = join(out, `${name}-js.wasm`);
  execFileSync(
    join(here, 'node_modules/.bin/componentize-js'),
    [source, '--wit', wit, '--world-name', world, '-d', 'http', 'fetch-event', '-o', target],
    { stdio: 'inherit' },
  );
}
