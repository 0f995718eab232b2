// Build plugin.js into a gale balancer component.
//
//   node build.mjs OUT.wasm
//
// componentize-js splices the WIT world's bindings into StarlingMonkey
// (SpiderMonkey for WebAssembly) and pre-initializes it with wizer, so the
// component starts with plugin.js already parsed and evaluated.
import { componentize } from '@bytecodealliance/componentize-js';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? resolve(here, '../../target/plugins/ip-hash-js.wasm'));

// componentize-js maps the source's directory by its path relative to the
// working directory; build from here so the source is found as plugin.js.
process.chdir(here);

// The contract: gale:plugin@0.1.0, the oldest of the 0.1 track, so the
// component loads in every gale whose host speaks 0.1.x (a newer host's
// @0.1.x instances satisfy @0.1.0 imports; the reverse does not hold).
// Once wit/ moves past 0.1.0 the old package lives in wit/previous/0.1.0.
// GALE_WIT_DIR overrides (plugin.js imports `gale:plugin/host@VERSION`,
// which must match the package there).
const CONTRACT = '0.1.0';
const witDir =
  process.env.GALE_WIT_DIR ??
  [resolve(here, '../../wit'), resolve(here, `../../wit/previous/${CONTRACT}`)].find(
    (d) => existsSync(resolve(d, 'worlds.wit')) && packageVersion(d) === CONTRACT,
  );
if (!witDir) {
  console.error(`ip-hash-js: no WIT package gale:plugin@${CONTRACT} under ${resolve(here, '../../wit')}`);
  process.exit(1);
}

function packageVersion(dir) {
  const m = /^package gale:plugin@([0-9.]+);/m.exec(readFileSync(resolve(dir, 'worlds.wit'), 'utf8'));
  return m?.[1];
}

const started = Date.now();
const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: witDir,
  worldName: 'balancer',
  // gale grants plugins WASI clocks, random and cli only, and the plugin
  // needs none of them: no fetch, no console, no Math.random, no Date.
  // Every WASI import the engine would otherwise make is stubbed out.
  disableFeatures: ['http', 'fetch-event', 'stdio', 'random', 'clocks'],
});

await mkdir(dirname(out), { recursive: true });
// Write-then-rename: a gale watching OUT never reads half a file.
const tmp = `${out}.tmp-${process.pid}`;
await writeFile(tmp, component);
await rename(tmp, out);
console.error(
  `ip-hash-js: wrote ${out} (${component.length} bytes, gale:plugin@${CONTRACT} from ${witDir}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
);
