// Build {{name}}.wasm from plugin.js with componentize-js.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
process.chdir(here);
const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: resolve(here, 'wit'),
  worldName: 'balancer',
  // gale grants plugins no WASI beyond clocks, random and cli; this plugin
  // needs none of it.
  disableFeatures: ['http', 'fetch-event', 'stdio', 'random', 'clocks'],
});
await writeFile(resolve(here, '{{name}}.wasm'), component);
console.error(`built ${resolve(here, '{{name}}.wasm')} (${component.length} bytes)`);
